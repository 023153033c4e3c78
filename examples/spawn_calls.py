"""Fire-and-forget calls: spawn now, collect the result later.

ketch run examples/spawn_calls.py --workdir /tmp/some-empty-dir
"""

import json
import os
import time

import ketch

app = ketch.App("spawn-calls")


@app.function()
def slow_square(x: int, delay: float = 0.5) -> int:
    time.sleep(delay)
    return x * x


@app.function(timeout=120)
def sleep_long(seconds: float = 100.0) -> str:
    time.sleep(seconds)
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

    slow = slow_square.spawn(9, delay=8.0)
    show("get_timeout", lambda: outcome(lambda: slow.get(timeout=0.5)))

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
        time.sleep(1.0)
        call.cancel()
        time.sleep(0.5)  # allow the cancellation to reach the container
        at_cancel = int(open(path).read() or 0)
        time.sleep(2.0)
        later = int(open(path).read() or 0)
        return {
            "at_cancel": at_cancel,
            "two_seconds_later": later,
            "saw_input_cancellation": os.path.exists(path + ".cancelled"),
        }

    show("cancel_stops_work", cancel_stops_work)

    show(
        "unknown_id",
        lambda: outcome(lambda: ketch.FunctionCall.from_id("fc-does-not-exist").get(timeout=5)),
    )
