"""Input concurrency and dynamic batching.

    ketch run examples/concurrency.py

``@ketch.concurrent`` lets one container work on several inputs at once;
``@ketch.batched`` collects single calls into lists for one invocation.
"""

import json
import os
import time
import uuid

import ketch

app = ketch.App("concurrency")


def wait_for_all(meeting: ketch.Dict, n: int, timeout: float = 30.0) -> bool:
    """Arrive, then wait for ``n`` inputs to be running at once (False if they never are)."""
    meeting.put(uuid.uuid4().hex, True)
    deadline = time.monotonic() + timeout
    while meeting.len() < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@app.function(max_containers=1)
@ketch.concurrent(max_inputs=8, target_inputs=4)
def io_bound(meeting: ketch.Dict, n: int) -> int | None:
    # Returns only if all n inputs run at once: in one container (max_containers=1).
    return os.getpid() if wait_for_all(meeting, n) else None


@app.function()
@ketch.batched(max_batch_size=4, wait_ms=500)
def double_batch(xs: list[int]) -> list[dict]:
    return [{"x": x, "doubled": 2 * x, "batch_size": len(xs)} for x in xs]


@app.function(max_containers=1)
def one_at_a_time(running: ketch.Dict) -> dict:
    """Note whether another input was running alongside this one."""
    me = uuid.uuid4().hex
    running.put(me, True)
    time.sleep(0.2)  # a window for a second input to overlap this one
    alongside = running.len() - 1
    running.pop(me)
    return {"pid": os.getpid(), "alongside": alongside}


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


def concurrent_map() -> list:
    with ketch.Dict.ephemeral() as meeting:
        return list(io_bound.map([meeting] * 8, [8] * 8))


def one_by_one() -> list:
    with ketch.Dict.ephemeral() as running:
        return list(one_at_a_time.map([running] * 4))


@app.local_entrypoint()
def main():
    show("concurrent_map", concurrent_map)
    show("batched_map", lambda: list(double_batch.map(range(8))))
    show("batched_remote", lambda: double_batch.remote(5))
    show("max_containers_1", one_by_one)
