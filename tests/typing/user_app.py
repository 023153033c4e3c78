"""A user's app, checked by ``mypy --strict`` (tests/unit/test_user_typing.py), never run.

Each ``assert_type`` fails the check when ketch's public types say otherwise;
each ``# type: ignore[...]`` line must be an error (``--warn-unused-ignores``).
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator, Iterator
from typing import Any, assert_type

import ketch

app = ketch.App("typing-check")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function(timeout=60, retries=2, secrets=[ketch.Secret.from_dict({"TOKEN": "t"})])
async def shout(text: str, times: int = 1) -> str:
    return text.upper() * times


@app.function()
def count(n: int) -> Iterator[int]:
    yield from range(n)


@app.function()
@ketch.batched(max_batch_size=8, wait_ms=10)
def double(xs: list[int]) -> list[int]:
    return [2 * x for x in xs]


@app.cls()
class Model:
    size: int = ketch.parameter(default=1)

    @ketch.enter()
    def load(self) -> None:
        self.table = list(range(self.size))

    @ketch.method()
    def lookup(self, i: int) -> str:
        return str(self.table[i])

    @ketch.method()
    async def alookup(self, i: int) -> str:
        return self.lookup(i)  # called on the object itself: runs here


def blocking() -> None:
    handle: ketch.Function[[int], int] = square  # reveal_type: Function[[x: int], int, int]
    assert_type(handle.remote(2), int)
    assert_type(square.remote(2), int)
    assert_type(square.local(2), int)
    assert_type(square(2), int)
    square.remote("2")  # type: ignore[arg-type]
    square.remote(2, 3)  # type: ignore[call-arg]
    assert_type(square.map([1, 2]), Generator[int, None, None])
    assert_type(
        square.map([1, 2], return_exceptions=True), Generator[int | BaseException, None, None]
    )
    assert_type(square.starmap([(1,), (2,)]), Generator[int, None, None])
    call = square.spawn(3)
    assert_type(call, ketch.FunctionCall[int])
    assert_type(call.get(timeout=5), int)
    assert_type(square.spawn_map([1, 2]).get(), list[int])
    assert_type(ketch.FunctionCall.gather(call, call), list[Any])

    assert_type(shout.remote("hi", times=2), str)
    shout.remote(text=3)  # type: ignore[arg-type]
    local: Coroutine[Any, Any, str] = shout.local("hi")  # an async def runs as one here
    local.close()
    assert_type(count.remote_gen(3), Generator[Any, None, None])
    assert_type(double.remote(3), Any)  # one item in, one out: not what the signature says

    model = Model()  # Model(size=3): pyright checks it; mypy applies no dataclass_transform
    # through a method decorator (app.cls) and reports the keyword, as it did before
    method: ketch.Function[[int], str] = model.lookup
    assert_type(method.local(1), str)
    assert_type(model.lookup.remote(1), str)
    assert_type(model.alookup.remote(1), str)
    model.lookup.remote("1")  # type: ignore[arg-type]

    looked_up = ketch.Function.from_name("other-app", "f")
    assert_type(looked_up.remote(1, "anything"), Any)
    assert_type(ketch.Cls.from_name("other-app", "C")(size=3).m.remote(), Any)

    with app.run() as running:
        assert_type(running, ketch.App)
    assert_type(app.deploy(name="x"), ketch.App)


@app.function(gpus="A100")  # type: ignore[call-arg]
def misspelt_option() -> None:
    pass


async def in_async_code() -> None:
    assert_type(await square.remote.aio(2), int)
    assert_type(await shout.remote.aio("hi"), str)
    assert_type(await square.spawn.aio(2), ketch.FunctionCall[int])
    assert_type(await square.spawn(2).get.aio(), int)
    async for value in square.map.aio([1, 2]):
        assert_type(value, int)
    assert_type(await Model().lookup.remote.aio(1), str)
    async with app.run() as running:
        assert_type(running, ketch.App)
