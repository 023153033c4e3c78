"""Bad calls fail on the caller's side, before any input is sent.

ketch run examples/bad_input.py --workdir /tmp/some-empty-dir
"""

import json
import os
import threading
from pathlib import Path

import ketch

app = ketch.App("bad-input")


@app.function()
def record(path: str, value) -> str:
    with open(path, "a") as f:
        f.write(f"{value!r}\n")
    return "recorded"


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


def outcome(fn):
    try:
        value = fn()
    except Exception as exc:
        return {
            "raised": type(exc).__name__,
            "message": str(exc),
            "is_type_error": isinstance(exc, TypeError),
            "is_ketch_error": isinstance(exc, ketch.exception.Error),
            "is_invalid": isinstance(exc, ketch.exception.InvalidError),
        }
    return {"returned": value}


@app.local_entrypoint()
def main(workdir: str):
    log = os.path.join(workdir, "calls.log")
    show("too_many_args", lambda: outcome(lambda: record.remote(log, 1, 2)))
    show("too_few_args", lambda: outcome(lambda: record.remote(log)))
    show("unknown_kwarg", lambda: outcome(lambda: record.remote(log, 1, colour="red")))
    show("spawn_bad_args", lambda: outcome(lambda: record.spawn(log, 1, 2, 3)))
    show("unpicklable_lock", lambda: outcome(lambda: record.remote(log, threading.Lock())))
    show(
        "unpicklable_generator", lambda: outcome(lambda: record.remote(log, (i for i in range(3))))
    )
    show("good_call", lambda: outcome(lambda: record.remote(log, "ok")))
    show(
        "calls_recorded", lambda: Path(log).read_text().splitlines() if os.path.exists(log) else []
    )
