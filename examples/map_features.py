"""Every way of fanning work out over many inputs.

    ketch run examples/map_features.py --workdir /tmp/some-empty-dir

Each step prints one ``RESULT {...}`` JSON line, so you can see at a glance
what every call returned (the end-to-end tests read those lines too).
"""

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import ketch

app = ketch.App("map-features")


@app.function()
def add(a: int, b: int) -> int:
    return a + b


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} never appeared")
        time.sleep(0.02)


@app.function()
@ketch.concurrent(max_inputs=10)
def finish_in_turn(directory: str, rank: int, after: str = "done") -> int:
    """Finish once every input of a lower ``rank`` is ``after``: "done" (it returned), or
    "got" (the caller has its result, so completion order cannot race delivery)."""
    for earlier in range(rank):
        wait_for_file(Path(directory, f"{after}-{earlier}"))
    Path(directory, f"done-{rank}").touch()
    return rank


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


@app.function()
def ticks_on_ack(directory: str, n: int):
    """Yield the next value only once the caller has got the last one."""
    for i in range(n):
        yield i
        wait_for_file(Path(directory, f"ack-{i}"))


@app.function()
def fails_midway(n: int):
    for i in range(n):
        if i == 2:
            raise RuntimeError("generator broke at 2")
        yield i


@app.function()
def fan_out(n: int) -> dict:
    """Calls other functions of the app from inside a container."""
    squares = list(add.map(range(n), range(n)))
    spawned = add.spawn(100, 1).get()
    return {"mapped": squares, "spawned": spawned, "remote": add.remote(2, 3)}


@app.function()
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


@app.function()
@ketch.concurrent(max_inputs=10)
async def async_meet(directory: str, n: int) -> bool:
    """Arrive, then wait (without blocking the event loop) for ``n`` inputs to be running at once."""
    Path(directory, f"arrived-{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + 30
    while len(os.listdir(directory)) < n:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@app.function()
async def async_countdown(n: int):
    for i in range(n, 0, -1):
        await asyncio.sleep(0.01)
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

    def ordered() -> list[int]:
        # The first input finishes last, yet its result comes first.
        directory = Path(workdir, "ordered")
        directory.mkdir()
        return list(finish_in_turn.map([str(directory)] * 3, [2, 0, 1]))

    def unordered() -> list[int]:
        # Results come as they finish: rank 0, then 1 (once we have 0), then 2.
        directory = Path(workdir, "unordered")
        directory.mkdir()
        received = []
        ranks = finish_in_turn.map(
            [str(directory)] * 3, [2, 0, 1], ["got"] * 3, order_outputs=False
        )
        for rank in ranks:
            received.append(rank)
            Path(directory, f"got-{rank}").touch()
        return received

    show("map_ordered", ordered)
    show("map_unordered", unordered)

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

    def generator_error():
        received = []
        try:
            for value in fails_midway.remote_gen(5):
                received.append(value)
        except RuntimeError as exc:
            return {"received": received, "raised": str(exc)}
        return {"received": received, "raised": None}

    show("remote_gen_error", generator_error)

    show("nested_calls", lambda: fan_out.remote(4))

    show("async_function_remote", lambda: async_add.remote(1, 2))
    show("async_function_map", lambda: list(async_add.map(range(3), range(3))))
    show("async_generator", lambda: list(async_countdown.remote_gen(3)))

    def async_concurrent():
        # Eight inputs that each wait for all eight: they only finish if they run at once.
        directory = Path(workdir, "meeting")
        directory.mkdir()
        return list(async_meet.map([str(directory)] * 8, [8] * 8))

    show("async_concurrent", async_concurrent)

    def remote_gen_streams():
        # Each value must arrive as it is yielded: the generator waits for its ack.
        directory = Path(workdir, "acks")
        directory.mkdir()
        received = []
        for value in ticks_on_ack.remote_gen(str(directory), 4):
            received.append(value)
            Path(directory, f"ack-{value}").touch()
        return received

    show("remote_gen_streams", remote_gen_streams)
