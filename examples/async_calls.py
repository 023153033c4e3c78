"""The ``.aio`` variants: the same calls from asyncio code.

ketch run examples/async_calls.py
"""

import asyncio
import json
import time
import uuid

import ketch

app = ketch.App("async-calls")


@app.function()
def double(x: int) -> int:
    return 2 * x


@app.function()
@ketch.concurrent(max_inputs=10)
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function()
@ketch.concurrent(max_inputs=10)
def meet(meeting: ketch.Dict, n: int) -> bool:
    """Arrive, then wait for ``n`` calls to be running at once (False if they never are)."""
    meeting.put(uuid.uuid4().hex, True)
    deadline = time.monotonic() + 30
    while meeting.len() < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@app.function()
def countdown(n: int):
    for i in range(n, 0, -1):
        time.sleep(0.05)  # values arrive one by one, as they are produced
        yield i


async def show(step, make_coro):
    try:
        value = await make_coro()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


@app.local_entrypoint()
async def main():
    await show("remote_aio", lambda: double.remote.aio(21))

    async def map_aio():
        return [r async for r in double.map.aio(range(5))]

    await show("map_aio", map_aio)

    async def starmap_aio():
        return [r async for r in nap.starmap.aio([(0.1,), (0.2,)])]

    await show("starmap_aio", starmap_aio)

    async def spawn_aio():
        call = await double.spawn.aio(50)
        return await call.get.aio()

    await show("spawn_aio", spawn_aio)

    async def remote_gen_aio():
        return [r async for r in countdown.remote_gen.aio(3)]

    await show("remote_gen_aio", remote_gen_aio)

    async def gather_remote():
        # Five calls that each wait for all five: they only return if they run at once.
        async with ketch.Dict.ephemeral() as meeting:
            return await asyncio.gather(*(meet.remote.aio(meeting, 5) for _ in range(5)))

    await show("gather_remote", gather_remote)
