"""Every way of fanning work out over many inputs.

    ketch run examples/map_features.py --workdir /tmp/some-empty-dir

Each step prints one ``RESULT {...}`` JSON line, so you can see at a glance
what every call returned (the end-to-end tests read those lines too).
"""

import json
import os
import time
from pathlib import Path

import ketch

app = ketch.App("map-features")


@app.function()
def add(a: int, b: int) -> int:
    return a + b


@app.function()
@ketch.concurrent(max_inputs=10)
def sleep_then_echo(seconds: float) -> float:
    # One container runs all inputs at once, so they finish in order of length.
    time.sleep(seconds)
    return seconds


@app.function()
def fail_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd input {x}")
    return x


@app.function()
def touch(directory: str, i: int) -> None:
    Path(directory, f"touched-{i}").write_text(str(os.getpid()))


@app.function()
def countdown(n: int):
    for i in range(n, 0, -1):
        time.sleep(0.05)  # values arrive one by one, as they are produced
        yield i


def show(step, fn):
    """Run one demo step and print its outcome as a single JSON line."""
    try:
        value = fn()
    except Exception as exc:  # show the failure and go on with the next step
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


def wait_for_files(directory: str, names: list[str], timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        present = sorted(n for n in os.listdir(directory) if n in names)
        if len(present) == len(names):
            return present
        time.sleep(0.2)
    return sorted(n for n in os.listdir(directory) if n in names)


def describe(results):
    return [f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else r for r in results]


def map_raises():
    try:
        list(fail_on_odd.map(range(4)))
    except ValueError as exc:
        return f"ValueError: {exc}"
    return "no exception"


@app.local_entrypoint()
def main(workdir: str):
    show("map", lambda: list(add.map(range(5), range(10, 15))))
    show("map_kwargs", lambda: list(add.map(range(3), kwargs={"b": 100})))
    show("starmap", lambda: list(add.starmap([(1, 2), (3, 4), (5, 6)])))
    show("map_empty", lambda: list(add.map([], [])))

    delays = [2.0, 0.2, 1.0]
    show("map_ordered", lambda: list(sleep_then_echo.map(delays)))
    show("map_unordered", lambda: list(sleep_then_echo.map(delays, order_outputs=False)))

    show(
        "map_return_exceptions", lambda: describe(fail_on_odd.map(range(4), return_exceptions=True))
    )
    show("map_raises", map_raises)

    def for_each():
        value = touch.for_each([workdir] * 3, range(3))
        return {
            "returned": value,
            "files": wait_for_files(workdir, [f"touched-{i}" for i in range(3)], 5),
        }

    show("for_each", for_each)

    def spawn_map():
        value = touch.spawn_map([workdir] * 2, [10, 11])
        return {"returned": value, "files": wait_for_files(workdir, ["touched-10", "touched-11"])}

    show("spawn_map", spawn_map)

    show("remote_gen", lambda: list(countdown.remote_gen(4)))
