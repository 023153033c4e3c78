"""Container output streams live to your terminal.

ketch run examples/logs_streaming.py::main
ketch app logs logs-streaming     # the same lines, afterwards
"""

import sys
import time

import ketch

app = ketch.App("logs-streaming")


@app.function()
def chatty(tag: str) -> str:
    print(f"STDOUT-LINE early tag={tag}")
    print(f"STDERR-LINE tag={tag}", file=sys.stderr)
    time.sleep(3)
    print(f"LATE-LINE tag={tag}")
    return tag


@app.local_entrypoint()
def main(tag: str = "t1"):
    print("returned:", chatty.remote(tag))


@app.function()
def flood(lines: int) -> int:
    for i in range(lines):
        print(f"flood line {i}")
    return lines


@app.local_entrypoint()
def many_lines(lines: int = 20000):
    print("flooded:", flood.remote(lines))
