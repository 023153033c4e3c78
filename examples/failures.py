"""Timeouts, retries and crashing containers.

ketch run examples/failures.py --workdir /tmp/some-empty-dir
"""

import json
import os
import signal
import time
from pathlib import Path

import ketch

app = ketch.App("failures")


def bump(counter: str) -> int:
    """Count one more attempt in the file ``counter``; return the attempt number."""
    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    return attempt


@app.function(timeout=2)
def too_slow() -> str:
    time.sleep(60)
    return "finished"


@app.function(retries=ketch.Retries(max_retries=2, backoff_coefficient=1.0, initial_delay=0.1))
def flaky(counter: str, failures: int) -> int:
    attempt = bump(counter)
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} failed")
    return attempt


@app.function(retries=2)
def flaky_int_retries(counter: str, failures: int) -> int:
    attempt = bump(counter)
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} failed")
    return attempt


@app.function(retries=ketch.Retries(max_retries=1, initial_delay=0.1))
def flaky_too_often(counter: str, failures: int) -> int:
    attempt = bump(counter)
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} failed")
    return attempt


@app.function(retries=ketch.Retries(max_retries=2, initial_delay=0.1))
def crash_then_ok(counter: str) -> int:
    attempt = bump(counter)
    if attempt == 1:
        os._exit(3)  # the first container dies mid-input; the retry gets a new one
    return attempt


@app.function(timeout=2, retries=ketch.Retries(max_retries=1, initial_delay=0.1))
def slow_then_fast(counter: str) -> int:
    attempt = bump(counter)
    if attempt == 1:
        time.sleep(30)  # runs past the timeout; the retry is quick
    return attempt


@app.function()
def crash_exit() -> str:
    os._exit(1)


@app.function()
def crash_sigkill() -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)
    return "unreachable"


@app.function()
def healthy() -> str:
    return "still fine"


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


def outcome(fn):
    start = time.monotonic()
    try:
        value = fn()
    except Exception as exc:
        return {
            "raised": type(exc).__name__,
            "mro": [c.__name__ for c in type(exc).__mro__],
            "message": str(exc),
            "is_ketch_error": isinstance(exc, ketch.exception.Error),
            "elapsed": time.monotonic() - start,
        }
    return {"returned": value, "elapsed": time.monotonic() - start}


@app.local_entrypoint()
def main(workdir: str):
    def counter(name):
        return os.path.join(workdir, name)

    # The slow ones (a 2 s timeout, retries=2's 1 s and 2 s backoff, a first attempt that
    # times out) are spawned first, so that they wait out their seconds side by side.
    slow = {
        "timeout": too_slow.spawn(),
        "retries_int": flaky_int_retries.spawn(counter("int"), 2),
        "timeout_retried": slow_then_fast.spawn(counter("slow")),
    }
    show("retries_succeed", lambda: outcome(lambda: flaky.remote(counter("flaky"), 2)))
    show("retries_exhausted", lambda: outcome(lambda: flaky_too_often.remote(counter("often"), 2)))
    for step, call in slow.items():
        show(step, lambda call=call: outcome(call.get))
    show(
        "attempts",
        lambda: {n: int(Path(counter(n)).read_text()) for n in ("flaky", "int", "often")},
    )
    show("crash_exit", lambda: outcome(crash_exit.remote))
    show("crash_sigkill", lambda: outcome(crash_sigkill.remote))
    show("after_crash", lambda: outcome(healthy.remote))
    show("crash_retried", lambda: outcome(lambda: crash_then_ok.remote(counter("crash"))))
