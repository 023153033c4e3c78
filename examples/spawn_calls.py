"""Fire-and-forget calls: spawn now, collect the result later.

ketch run examples/spawn_calls.py
"""

import json
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
def main():
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

    show(
        "unknown_id",
        lambda: outcome(lambda: ketch.FunctionCall.from_id("fc-does-not-exist").get(timeout=5)),
    )
