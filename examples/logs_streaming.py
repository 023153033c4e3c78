"""Container output streams live to your terminal.

ketch run examples/logs_streaming.py::main
ketch app logs logs-streaming     # the same lines, afterwards
"""

import sys
import time

import ketch

app = ketch.App("logs-streaming")


@app.function()
def chatty(tag: str, go: str = "") -> str:
    print(f"STDOUT-LINE early tag={tag}")
    print(f"STDERR-LINE tag={tag}", file=sys.stderr)
    if go:  # wait until whoever watches the terminal puts an item on the Queue `go`
        ketch.Queue.from_name(go, create_if_missing=True).get(timeout=60)
    else:
        time.sleep(3)
    print(f"LATE-LINE tag={tag}")
    return tag


@app.local_entrypoint()
def main(tag: str = "t1", go: str = ""):
    print("returned:", chatty.remote(tag, go))


@app.function()
def flood(lines: int) -> int:
    for i in range(lines):
        print(f"flood line {i}")
    return lines


@app.local_entrypoint()
def many_lines(lines: int = 20000):
    print("flooded:", flood.remote(lines))
