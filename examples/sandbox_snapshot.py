"""A sandbox's filesystem, snapshotted and reused as an image.

    ketch run examples/sandbox_snapshot.py

Set up an environment once by hand (or by an agent) in a sandbox, snapshot it
with ``snapshot_filesystem()``, and start new sandboxes and functions from
that image: they begin where the first one left off. The snapshot is a layer in
the machine's image cache over the sandbox's image, like any built step.
"""

import json

import ketch

app = ketch.App("sandbox-snapshot")


@app.local_entrypoint()
def main():
    setup = ketch.Sandbox.create(app=app)
    steps = [
        "mkdir -p /opt/tool",
        "printf '#!/bin/sh\\necho tool v1: $*\\n' > /opt/tool/run && chmod +x /opt/tool/run",
        "echo 'configured by the first sandbox' > /etc/tool.conf",
    ]
    for step in steps:
        assert setup.exec("sh", "-c", step).wait() == 0
    image = setup.snapshot_filesystem()
    setup.terminate()
    print(f"snapshot: {image}")

    again = ketch.Sandbox.create(app=app, image=image)
    p = again.exec("sh", "-c", "/opt/tool/run hello; cat /etc/tool.conf")
    in_sandbox = p.stdout.read()
    again.terminate()

    # The same image for a function, on an app of its own.
    functions = ketch.App("sandbox-snapshot-fn")
    reader = functions.function(image=image, serialized=True)(lambda: open("/etc/tool.conf").read())
    with functions.run():
        in_function = reader.remote()
    print(in_sandbox + in_function, end="")
    value = {"sandbox": in_sandbox, "function": in_function}
    print("RESULT " + json.dumps({"step": "snapshot", "value": value}))
