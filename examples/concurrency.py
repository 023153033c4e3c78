"""Input concurrency and dynamic batching.

    ketch run examples/concurrency.py

``@ketch.concurrent`` lets one container work on several inputs at once;
``@ketch.batched`` collects single calls into lists for one invocation.
"""

import json
import os
import time

import ketch

app = ketch.App("concurrency")


@app.function(max_containers=1)
@ketch.concurrent(max_inputs=8, target_inputs=4)
def io_bound(i: int) -> int:
    time.sleep(1.0)
    return os.getpid()


@app.function()
@ketch.batched(max_batch_size=4, wait_ms=500)
def double_batch(xs: list[int]) -> list[dict]:
    return [{"x": x, "doubled": 2 * x, "batch_size": len(xs)} for x in xs]


@app.function(max_containers=1)
def one_at_a_time(i: int) -> int:
    time.sleep(0.5)
    return os.getpid()


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


def timed(fn):
    start = time.monotonic()
    value = fn()
    return {"value": value, "elapsed": time.monotonic() - start}


@app.local_entrypoint()
def main():
    io_bound.remote(-1)  # start the container so the timing below leaves out the cold start
    show("concurrent_map", lambda: timed(lambda: list(io_bound.map(range(8)))))
    show("batched_map", lambda: list(double_batch.map(range(8))))
    show("batched_remote", lambda: double_batch.remote(5))
    show("max_containers_1", lambda: timed(lambda: list(one_at_a_time.map(range(4)))))
