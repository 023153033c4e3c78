"""The rest of Modal's surface a typical app reaches for, in one Modal-style app."""

import time

import modal
from modal.exception import NotFoundError

app = modal.App("compat-surface", image=modal.Image.debian_slim())
vol = modal.Volume.from_name("compat-surface-vol", create_if_missing=True, version=2)
attempts = modal.Dict.from_name("compat-surface-attempts", create_if_missing=True)

with app.image.imports():
    import json  # (inside the container too)


@app.function(
    volumes={"/data": vol},
    retries=modal.Retries(max_retries=2, initial_delay=0.1, backoff_coefficient=1.0),
)
def flaky(key: str) -> dict:
    n = attempts.get(key, 0) + 1
    attempts[key] = n
    if n < 2:
        raise RuntimeError("first try fails")
    with open("/data/out.json", "w") as fh:
        json.dump({"attempt": n}, fh)
    vol.commit()
    return {"attempt": n, "local": modal.is_local(), "input": modal.current_input_id() is not None}


@app.function(restrict_modal_access=True)
def locked(x: int) -> dict:
    """Its inputs and outputs flow; its token opens nothing else."""
    tried = {}
    for name, attempt in (
        ("dict", lambda: attempts.get("k")),
        ("call", lambda: flaky.spawn("k")),
        ("queue", lambda: modal.Queue.from_name("compat-surface-q").len()),
    ):
        try:
            attempt()
            tried[name] = "allowed"
        except Exception as exc:
            tried[name] = type(exc).__name__
    return {"x": x * 2, **tried}


@app.local_entrypoint()
def main():
    print("LOCKED", locked.remote(21))
    with modal.enable_output():
        print("LOCAL", modal.is_local())
        print("FLAKY", flaky.remote(str(time.time())))
        print("VOLUME", b"".join(vol.read_file("out.json")))
    q = modal.Queue.from_name("compat-surface-q", create_if_missing=True)
    print("QUEUE_EMPTY", q.get(block=False))
    box = modal.App.lookup("compat-surface-box", create_if_missing=True)
    sb = modal.Sandbox.create(
        "sh",
        "-c",
        "touch /tmp/ready; sleep 30",
        app=box,
        readiness_probe=modal.Probe.with_exec("test", "-f", "/tmp/ready"),
    )
    sb.wait_until_ready(timeout=60)
    print("SANDBOX_READY", sb.poll() is None)
    sb.terminate()
    try:
        modal.Function.from_name("compat-never-deployed", "f").hydrate()
    except NotFoundError as exc:
        print("NOT_FOUND", isinstance(exc, modal.Error))
