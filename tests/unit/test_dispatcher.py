"""The dispatcher against a fake worker: calls in, containers out, stops that are not lost.

A real store and blob store in a temporary folder; the worker, the container's
channel (a writer that records frames) and time between events are fakes, so
each test drives the exact order of events it is about.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ketch import _tasks
from ketch._serialization import pack
from ketch._spec import FunctionSpec
from ketch._wire import HEADER, decode
from ketch.server.blobs import BlobStore
from ketch.server.dispatcher import Dispatcher
from ketch.server.store import Store
from ketch.worker.gpus import GpuAllocator, Inventory

pytestmark = pytest.mark.timeout(30)

APP, FN = "ap-test", "fu-test"


class FakeWorker:
    """Records what the dispatcher asks; ``gate`` holds ``start`` until the test opens it."""

    name = "fake"
    isolation = "none (a test's fake worker)"
    enforces_read_only = False

    def __init__(self, on_exit: Any) -> None:
        self.on_exit = on_exit
        self.gate: asyncio.Event | None = None
        self.started: list[str] = []  # asked to start
        self.alive: set[str] = set()  # started and not yet exited
        self.terminated: list[str] = []

    async def start(
        self,
        container_id: str,
        env: dict[str, str],
        spec: FunctionSpec,
        mounts: Sequence[tuple[str, str, bool]] = (),
    ) -> None:
        self.started.append(container_id)
        if self.gate is not None:
            await self.gate.wait()
        self.alive.add(container_id)

    def terminate(self, container_id: str, grace: float) -> None:
        self.terminated.append(container_id)
        if container_id in self.alive:  # a worker only stops what it has
            self.alive.discard(container_id)
            asyncio.get_running_loop().call_soon(self.on_exit, container_id, "was terminated")

    def kill(self, container_id: str) -> None:
        self.terminate(container_id, 0)

    def running(self) -> int:
        return len(self.alive)

    def unenforced(self, spec: FunctionSpec) -> list[str]:
        return []

    async def shutdown(self, grace: float = 5.0) -> None:
        for cid in list(self.alive):
            self.terminate(cid, grace)


class FakeChannel:
    """A container's end of the channel: the frames the dispatcher wrote to it."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def frames(self) -> list[dict[str, Any]]:
        out, view = [], self.data
        while view:
            (size,) = HEADER.unpack(view[: HEADER.size])
            out.append(decode(view[HEADER.size : HEADER.size + size]))
            view = view[HEADER.size + size :]
        return out


@pytest.fixture
def parts(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    spec = FunctionSpec(tag="f", module_name="m", qualname="f")
    store.create_app(APP, "test", False, [{"id": FN, "tag": "f", "spec": pack(spec.to_wire())}])
    d = Dispatcher(
        store,
        BlobStore(tmp_path / "blobs"),
        "http://127.0.0.1:9",
        4,
        GpuAllocator(Inventory((), "none")),
    )
    worker = FakeWorker(d.container_exited)
    d.services.worker = worker
    yield d, worker
    store.close()


def _call(d: Dispatcher, call_id: str = "fc-1", n: int = 1) -> None:
    inputs = [{"idx": i, "args": pack(i)} for i in range(n)]
    d.create_call({"call_id": call_id, "function_id": FN, "inputs": inputs, "closed": True})


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_call_starts_a_container_runs_there_and_its_result_is_kept(parts):
    d, worker = parts

    async def main() -> None:
        _call(d)
        await _settle()
        assert len(worker.started) == 1
        cid = worker.started[0]
        channel = FakeChannel()
        init = d.container_hello(cid, d.containers[cid].token, channel)  # type: ignore[arg-type]
        assert init["t"] == "init" and init["app_id"] == APP
        d.container_message(cid, {"t": "ready"})
        (sent,) = channel.frames()
        assert sent["t"] == "inputs" and len(sent["items"]) == 1
        input_id = sent["items"][0]["id"]
        d.container_message(
            cid,
            {"t": "outputs", "items": [{"id": input_id, "status": "success", "data": b"ok"}]},
        )
        rows, done = await d.wait_outputs("fc-1", 0, 1.0, 10)
        assert done and [(r["status"], r["data"]) for r in rows] == [("success", b"ok")]
        assert d.pools[FN].failures == {}

    asyncio.run(main())


def test_a_container_that_dies_fails_its_input_with_a_crash(parts):
    d, worker = parts

    async def main() -> None:
        _call(d)
        await _settle()
        cid = worker.started[0]
        d.container_hello(cid, d.containers[cid].token, FakeChannel())  # type: ignore[arg-type]
        d.container_message(cid, {"t": "ready"})
        d.container_exited(cid, "exited with code 1")
        rows, done = await d.wait_outputs("fc-1", 0, 1.0, 10)
        assert done and rows[0]["status"] == "crash"
        assert cid not in d.containers

    asyncio.run(main())


def test_a_stop_before_the_start_ran_means_no_start(parts):
    """Regression: stopping an app while its container was about to start lost the stop."""
    d, worker = parts

    async def main() -> None:
        _call(d)  # the start is a task that has not run yet
        await d.stop_app(APP, wait=0)
        await _settle()
        assert worker.started == [] and not d.containers

    asyncio.run(main())


def test_a_stop_while_the_worker_starts_the_container_stops_it_once_started(parts):
    """Regression: ``terminate`` came before the worker knew the container; it ran on."""
    d, worker = parts
    worker.gate = asyncio.Event()

    async def main() -> None:
        _call(d)
        await _settle()
        (cid,) = worker.started
        await d.stop_app(APP, wait=0)
        assert cid in d.containers and d.containers[cid].stop_requested
        worker.gate.set()  # the worker now has it
        await _settle()
        assert worker.alive == set(), "the container kept running after its app stopped"
        assert cid not in d.containers

    asyncio.run(main())


def test_spawned_tasks_are_kept_until_they_finish():
    async def main() -> list[int]:
        done: list[int] = []

        async def work() -> None:
            await asyncio.sleep(0.01)
            done.append(1)

        _tasks.spawn(work())  # no reference kept here
        gc.collect()
        await asyncio.sleep(0.05)
        return done

    assert asyncio.run(main()) == [1]
