"""A code interpreter in a sandbox: state kept across executions.

    ketch run examples/sandbox_code_interpreter.py

One Python process runs in a sandbox (no network, no API token) and executes
each code cell it is sent on its stdin in the same globals, like a notebook
kernel: a variable defined by one cell is there for the next, an exception in
one cell is reported and the next still runs. The driver is this file's
``DRIVER``; cells and replies are one JSON line each.
"""

import json

import ketch

app = ketch.App("sandbox-code-interpreter")

DRIVER = r"""
import contextlib, io, json, sys, traceback
scope = {}
for line in sys.stdin:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(json.loads(line)["code"], scope)
        reply = {"ok": True, "stdout": out.getvalue()}
    except Exception:
        reply = {"ok": False, "stdout": out.getvalue(), "error": traceback.format_exc(limit=1)}
    print(json.dumps(reply), flush=True)
"""


class Interpreter:
    """Cells in, replies out: one long-running process in one sandbox."""

    def __init__(self) -> None:
        self.sandbox = ketch.Sandbox.create(app=app, block_network=True, timeout=600)
        self.process = self.sandbox.exec("python3", "-u", "-c", DRIVER)
        self.replies = iter(self.process.stdout)

    def run(self, code: str) -> dict:
        self.process.stdin.write(json.dumps({"code": code}) + "\n")
        self.process.stdin.drain()
        return json.loads(next(self.replies))

    def close(self) -> None:
        self.sandbox.terminate()


@app.local_entrypoint()
def main():
    kernel = Interpreter()
    try:
        cells = [
            "import math\nradius = 3",
            "area = math.pi * radius ** 2\nprint(round(area, 2))",
            "print(undefined_name)",
            "radius += 1\nprint(radius, round(math.pi * radius ** 2, 2))",
        ]
        replies = [kernel.run(cell) for cell in cells]
    finally:
        kernel.close()
    for cell, reply in zip(cells, replies, strict=True):
        print(f">>> {cell.splitlines()[-1]}\n{reply['stdout'] or reply.get('error', '')}")
    value = {
        "outputs": [r["stdout"] for r in replies],
        "failed_cell": [r["ok"] for r in replies],
        "error_named": "NameError" in replies[2].get("error", ""),
    }
    print("RESULT " + json.dumps({"step": "code_interpreter", "value": value}))
