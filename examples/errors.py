"""Exceptions raised in a container come back as the same type, with the remote traceback.

ketch run examples/errors.py::main       # catches and inspects the errors
ketch run examples/errors.py::uncaught   # lets one escape: note the remote frames
"""

import json
import threading
import traceback

import ketch

app = ketch.App("errors")


class CustomError(Exception):
    """An exception type defined by the app itself."""


class UnpicklableError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()  # cannot be pickled, so it cannot travel back as-is


@app.function()
def raise_value_error(x: int) -> int:
    raise ValueError(f"bad value {x}")  # REMOTE-RAISE-LINE


@app.function()
def raise_custom() -> None:
    raise CustomError("custom failure")


@app.function()
def raise_key_error() -> int:
    return {}["missing-key"]


@app.function()
def raise_unpicklable() -> None:
    raise UnpicklableError("cannot pickle me")


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


def catch(fn, expected):
    try:
        fn()
    except expected as exc:
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
            "is_ketch_error": isinstance(exc, ketch.exception.Error),
        }
    except Exception as exc:
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "unexpected": True,
            "traceback": traceback.format_exc(),
        }
    return {"type": None}


@app.local_entrypoint()
def main():
    show("value_error", lambda: catch(lambda: raise_value_error.remote(42), ValueError))
    show("custom_error", lambda: catch(raise_custom.remote, CustomError))
    show("key_error", lambda: catch(raise_key_error.remote, KeyError))
    show("unpicklable_error", lambda: catch(raise_unpicklable.remote, ketch.exception.Error))
    show("map_error", lambda: catch(lambda: list(raise_value_error.map([7])), ValueError))
    show("spawn_error", lambda: catch(lambda: raise_value_error.spawn(8).get(), ValueError))


@app.local_entrypoint()
def uncaught():
    raise_value_error.remote(13)
