"""Fire-and-forget calls: spawn now, collect the result later.

ketch run examples/spawn_calls.py --workdir /tmp/some-empty-dir
"""

import json
import os
import time
from pathlib import Path

import ketch

app = ketch.App("spawn-calls")


@app.function()
def slow_square(x: int, delay: float = 0.5) -> int:
    time.sleep(delay)
    return x * x


@app.function(timeout=120)
def wait_for(path: str) -> str:
    """Return once ``path`` exists: a call that ends exactly when its caller says so."""
    while not os.path.exists(path):
        time.sleep(0.05)
    return "released"


@app.function(timeout=120)
def sleep_long(seconds: float = 100.0) -> str:
    # Short naps: a cancellation lands between two of them (it cannot cut one C-level sleep
    # short, and the container would stay busy until the app stops it).
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
    return "finished"


@app.function(timeout=120)
def ticker(path: str, ticks: int = 80) -> int:
    """Write a growing counter to ``path`` four times a second."""
    try:
        for i in range(ticks):
            with open(path, "w") as f:
                f.write(str(i))
            time.sleep(0.25)
    except ketch.exception.InputCancellation:
        # Cancelling the call raises this inside the running input: clean up, then re-raise.
        with open(path + ".cancelled", "w") as f:
            f.write("cleaned up")
        raise
    return ticks


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


def outcome(fn):
    """Run ``fn`` and describe what it raised (or returned) and how long it took."""
    start = time.monotonic()
    try:
        value = fn()
    except BaseException as exc:  # InputCancellation is a BaseException
        return {
            "raised": type(exc).__name__,
            "message": str(exc),
            "is_ketch_error": isinstance(exc, ketch.exception.Error),
            "is_timeout": isinstance(exc, TimeoutError),  # ketch raises a TimeoutError subclass
            "elapsed": time.monotonic() - start,
        }
    return {"returned": value, "elapsed": time.monotonic() - start}


@app.local_entrypoint()
def main(workdir: str):
    call = slow_square.spawn(7)
    show("object_id", lambda: call.object_id)
    show("spawn_get", call.get)
    show("from_id_get", lambda: ketch.FunctionCall.from_id(call.object_id).get())

    def gather():
        calls = [slow_square.spawn(i) for i in range(5)]
        return ketch.FunctionCall.gather(*calls)

    show("gather", gather)

    show("spawn_kwargs", lambda: slow_square.spawn(3, delay=0.1).get(timeout=60))

    def get_timeout():
        gate = os.path.join(workdir, "gate")
        gated = wait_for.spawn(gate)
        timed_out = outcome(lambda: gated.get(timeout=0.5))  # the call cannot have ended yet
        open(gate, "w").close()
        return {**timed_out, "then": gated.get(timeout=60)}  # the call went on meanwhile

    show("get_timeout", get_timeout)

    def cancel():
        long = sleep_long.spawn()
        time.sleep(1.0)  # let it reach a container
        long.cancel()
        return outcome(lambda: long.get(timeout=30))

    show("cancel", cancel)

    def cancel_stops_work():
        path = os.path.join(workdir, "ticks")
        call = ticker.spawn(path)
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        call.cancel()
        # The input cleans up when InputCancellation reaches it, then ticks no more.
        while not os.path.exists(path + ".cancelled") and time.monotonic() < deadline:
            time.sleep(0.1)
        at_cancel = int(Path(path).read_text() or 0)
        time.sleep(1.0)  # four ticks, were it still running
        return {
            "at_cancel": at_cancel,
            "a_second_later": int(Path(path).read_text() or 0),
            "saw_input_cancellation": os.path.exists(path + ".cancelled"),
        }

    show("cancel_stops_work", cancel_stops_work)

    show(
        "unknown_id",
        lambda: outcome(lambda: ketch.FunctionCall.from_id("fc-does-not-exist").get(timeout=5)),
    )
