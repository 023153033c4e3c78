"""The async shell around the scheduler: it performs the pools' actions.

It owns the in-memory view of calls, inputs and containers (records in
``dispatch_state.py``), persists every result before anyone is told about it,
and wakes clients waiting for outputs. Queues past the window live in
``queue_window.py``, gangs of containers in ``gangs.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._config import config
from .._ids import new_id
from .._serialization import MAX_INLINE_BYTES, pack, serialize_exception, unpack
from .._spec import FunctionSpec
from .._tasks import spawn
from ..exception import (
    CallCancelledError,
    ContainerCrashError,
    InvalidError,
    NotFoundError,
    OutOfMemoryError,
    ResourceUnavailableError,
)
from ..retries import Retries
from ..worker import gpus
from ..worker.local import LocalWorker
from . import call_records, gangs, starts, variants, web_inputs
from . import scheduler as sm
from .blobs import BlobStore
from .dispatch_state import (
    CallState,
    ContainerHandle,
    InputState,
    PoolInfo,
    keep_in_memory,
    pool_key_for,
)
from .logs import LogBook, call_of
from .metrics import Metrics
from .queue_window import QueueWindow
from .services import Builds, ContainerVolumes, Gateway, Schedules, Services, Worker
from .store import FINAL_STATUSES, Store
from .tracing import Tracer
from .tunnels import Tunnels
from .usage import FLUSH_EVERY_S, Meter

if TYPE_CHECKING:
    from .sandboxes import SandboxService

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
EXITED_KEPT = 1000  # exited containers remembered for `ketch container list|logs`
OUTCOME = {
    "success": "success",
    "failure": "failure",
    "timeout": "failure",
    "cancelled": "cancelled",
}


DETAIL_FIRST = 10  # inputs of a call whose containers send back reprs of what they saw
DETAIL_MAX = 4000  # characters kept of each
# All an output's detail may hold: what its container sent, and (ours) which container.
DETAIL_KEYS = ("args", "result", "error", "traceback", "container")
PRUNE_FIRST_S = 30.0  # after a start, then every PRUNE_EVERY_S
PRUNE_EVERY_S = 3600.0


class Dispatcher:
    """Calls in, containers out."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        server_url: str,
        max_containers: int,
        gpu_allocator: gpus.GpuAllocator | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.server_url = server_url
        self.channel_addr = ""
        self.max_containers = max_containers
        self.logs = LogBook(store)
        self.gpus = gpu_allocator or gpus.GpuAllocator(gpus.discover())
        # The ``local`` runtime until the server gives another worker and the rest.
        self.services = Services(
            LocalWorker(
                self.container_log,
                self.container_exited,
                use_template=config.get("fork_containers"),
            )
        )
        self._web_ids = itertools.count(-1, -1)  # web inputs: negative ids, never stored
        self._gpu_waiting: set[str] = set()
        observe = bool(config.get("observe"))
        self.metrics = Metrics(observe)  # GET /metrics (server/metrics.py)
        # Usage and cost (server/usage.py).
        self.meter = Meter(store, self._container_usage, enabled=observe)
        self.tracer = Tracer()  # OpenTelemetry, where OTEL_EXPORTER_OTLP_ENDPOINT is set
        self.pools: dict[str, sm.Pool] = {}
        self.pool_info: dict[str, PoolInfo] = {}
        self.calls: dict[str, CallState] = {}
        self.inputs: dict[int, InputState] = {}
        # Queued inputs past a pool's window wait in the store only, as ranges of one call's
        # input ids (first, last), oldest first: memory does not grow with a queue's length.
        self.window = QueueWindow(self, max(int(config.get("queue_window") or 50_000), 1))
        self.containers: dict[str, ContainerHandle] = {}
        self._container_tokens: dict[str, str] = {}  # token -> container id
        self._spec_hashes: dict[str, str] = {}  # function id -> its archived spec's hash
        self._specs: dict[str, tuple[FunctionSpec, str]] = {}
        self._tick_task: asyncio.Task[None] | None = None
        self._evicting = False
        self._app_running: dict[str, bool] = {}
        # A container's reported output, held until its pool says Complete or Retry.
        self._stash: dict[int, dict[str, Any]] = {}
        self.sandboxes: SandboxService | None = None  # set by the control plane at start
        self.tunnels = Tunnels("127.0.0.1")  # ports of containers (ketch.forward, sandboxes)
        # Containers that exited lately, newest last: `ketch container logs` still finds them.
        self.exited_containers: collections.OrderedDict[str, dict[str, Any]] = (
            collections.OrderedDict()
        )

    # The services, by name (read-only: set them on ``services``).
    @property
    def worker(self) -> Worker:
        return self.services.worker

    @property
    def volumes(self) -> ContainerVolumes | None:
        return self.services.volumes

    @property
    def builds(self) -> Builds | None:
        return self.services.builds

    @property
    def gateway(self) -> Gateway | None:
        return self.services.gateway

    @property
    def schedules(self) -> Schedules | None:
        return self.services.schedules

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self.recover()
        self._tick_task = asyncio.create_task(self._ticker())
        self.logs.start()

    async def close(self) -> None:
        if self._tick_task:
            self._tick_task.cancel()
        for pool in self.pools.values():
            self._perform(pool, pool.stop_all())
        await self.worker.shutdown()
        for container_id in list(self.meter.live):
            self.meter.stop(container_id)
        with contextlib.suppress(Exception):
            self.meter.flush()
        self.tracer.close()
        if self.volumes is not None:
            await self.volumes.close()
        await self.logs.close()

    def _container_usage(self, container_id: str) -> tuple[float | None, int | None] | None:
        usage_of = getattr(self.worker, "usage", None)
        return usage_of(container_id) if usage_of is not None else None

    def recover(self) -> None:
        """Requeue every input that has no final output (it was queued or running).

        One lean pass over the queue (id and call, oldest first) leaves every input in
        the store as a spilled range of its pool; each pool then reads its window back
        (``QueueWindow.refill``), with arguments and attempts. A restart with millions queued holds
        only the windows, and takes seconds.
        """
        recovered = 0
        pools: dict[str, tuple[sm.Pool, str | None] | None] = {}  # by call
        running: dict[str, bool] = {}  # by app
        for input_id, call_id in self.store.pending_input_ids():
            recovered += 1
            if call_id not in pools:
                pools[call_id] = self._recovered_pool(call_id, running)
            found = pools[call_id]
            if found is not None:
                self.window.spill(found[0], call_id, found[1], [input_id])
        for pool in {id(p): p for p, _ in filter(None, pools.values())}.values():
            self.window.refill(pool)
        for app in self.store.running_apps():
            self.store.heartbeat(app["id"])
            if app["deployed"]:
                self.warm_deployed(app["id"])
        if recovered:
            logger.info("recovered %d queued inputs", recovered)

    def _recovered_pool(
        self, call_id: str, running: dict[str, bool]
    ) -> tuple[sm.Pool, str | None] | None:
        """The pool (and method) of a call whose inputs are requeued; None if its app stopped."""
        call = self.store.get_call(call_id)
        if call is None:
            return None
        if call["app_id"] not in running:
            app = self.store.get_app(call["app_id"])
            running[call["app_id"]] = app is not None and app["state"] == "running"
        if not running[call["app_id"]]:
            return None
        key = self._ensure_pool(call["function_id"], call["params"])
        return self.pools[key], call["method"]

    def warm_deployed(self, app_id: str) -> None:
        for fn in self.store.app_functions(app_id):
            spec = self.function_spec(fn["id"])[0]
            if spec.min_containers and not spec.is_class:
                key = self._ensure_pool(fn["id"], None)
                pool = self.pools[key]
                self._perform(pool, pool.tick(time.monotonic()))

    async def _ticker(self) -> None:
        next_prune = time.monotonic() + PRUNE_FIRST_S
        next_flush = time.monotonic() + FLUSH_EVERY_S
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY_S
                call_records.prune(self)
            if now >= next_flush:
                next_flush = now + FLUSH_EVERY_S
                try:
                    self.meter.flush()
                except Exception:
                    logger.exception("writing usage failed")
            for key, pool in list(self.pools.items()):
                if pool.stopped and not pool.containers:
                    del self.pools[key], self.pool_info[key]
                    continue
                try:
                    self._perform(pool, pool.tick(now))
                except Exception:
                    logger.exception("tick failed for pool %s", pool.key)

    # -- functions and pools -------------------------------------------------
    def function_spec(self, function_id: str) -> tuple[FunctionSpec, str]:
        cached = self._specs.get(function_id)
        if cached is None:
            row = self.store.get_function(function_id)
            if row is None:
                raise NotFoundError(f"no function {function_id!r}")
            cached = (FunctionSpec.from_wire(unpack(row["spec"])), row["app_id"])
            self._specs[function_id] = cached
            spec_hash = hashlib.sha256(row["spec"]).hexdigest()[:32]
            self._spec_hashes[function_id] = spec_hash
            self.store.archive_spec(spec_hash, row["spec"])  # the code its calls ran
        return cached

    def spec_hash(self, function_id: str) -> str | None:
        """The archived spec its calls run with now (``ketch call replay``)."""
        if function_id not in self._spec_hashes:
            self.function_spec(function_id)
        return self._spec_hashes.get(function_id)

    def metric_labels(self, function_id: str, app_id: str) -> tuple[str, str]:
        """``(app name, function tag)`` for metrics (read once per function)."""
        labels = self.metrics.names.get(function_id)
        if labels is None:
            app = self.store.get_app(app_id)
            try:
                tag = self.function_spec(function_id)[0].tag
            except NotFoundError:
                tag = function_id
            labels = self.metrics.names[function_id] = (str(app["name"]) if app else app_id, tag)
        return labels

    def forget_function(self, function_id: str) -> None:
        """A redeploy replaced the spec: drain the old containers (and re-derive the
        function's ``with_options`` variants)."""
        self._specs.pop(function_id, None)
        self._spec_hashes.pop(function_id, None)
        now = time.monotonic()
        for key, info in list(self.pool_info.items()):
            if info.function_id == function_id:
                info.spec = self.function_spec(function_id)[0]
                pool = self.pools[key]
                pool.policy = _policy(info.spec)
                self._perform(pool, pool.retire(now))
        variants.refresh(self, function_id)

    def respec(self, function_id: str, spec: FunctionSpec, now: float) -> None:
        """New autoscaler settings for a function's pools, keeping their containers (the
        store has the new spec already: read back, and archived, from there)."""
        self._specs.pop(function_id, None)
        self._spec_hashes.pop(function_id, None)
        spec = self.function_spec(function_id)[0]
        if spec.min_containers and not spec.is_class:
            self._ensure_pool(function_id, None)
        for key, info in list(self.pool_info.items()):
            if info.function_id == function_id:
                info.spec = spec
                pool = self.pools[key]
                pool.policy = _policy(spec)
                self._perform(pool, pool.tick(now))

    def _ensure_pool(self, function_id: str, params: bytes | None) -> str:
        key = pool_key_for(function_id, params)
        if key not in self.pools:
            spec, app_id = self.function_spec(function_id)
            app = self.store.get_app(app_id)
            self.pool_info[key] = PoolInfo(function_id, app_id, spec, params)
            self.pools[key] = sm.Pool(
                key,
                _policy(spec),
                new_container_id=lambda: new_id("ta"),
                room=functools.partial(self._room_for, key) if spec.gpu else self._room,
                keep_warm=bool(app and app["deployed"]),
            )
            if not self.app_running(app_id):
                self.pools[key].stopped = True  # only here to answer questions about old calls
        return key

    def _room_for(self, key: str) -> int:
        """Room on the node for one more container of a GPU pool: node room and free GPUs."""
        spec = self.pool_info[key].spec
        free = [g for g in self.gpus.inventory.gpus if g.index not in self._busy_gpus()]
        fits = max(
            (sum(1 for g in free if gpus.satisfies(o["type"], g)) // o["count"] for o in spec.gpu),
            default=0,
        )
        if fits == 0 and key not in self._gpu_waiting:
            self._gpu_waiting.add(key)
            info = self.pool_info[key]
            wanted = ", ".join(f"{o['type']}:{o['count']}" for o in spec.gpu)
            self.logs.add(
                info.app_id,
                spec.tag,
                "",
                "stderr",
                f"waiting for a GPU ({wanted}): all matching GPUs are busy\n",
            )
        elif fits:
            self._gpu_waiting.discard(key)
        if fits == 0:
            self._evict_idle_gpu_holder(key)
        return min(self._room(), fits)

    def _evict_idle_gpu_holder(self, waiting_key: str) -> None:
        """Stop the longest-idle container of another GPU pool, so a waiting pool gets its GPU."""
        self._evict_one(lambda key: key != waiting_key and bool(self.pool_info[key].spec.gpu))

    def _busy_gpus(self) -> set[int]:
        return {i for indices in self.gpus.busy().values() for i in indices}

    def _room(self) -> int:
        live = sum(1 for c in self.containers.values() if not c.exited.is_set())
        room = self.max_containers - live
        if room <= 0:
            self._evict_one()
        return max(0, room)

    def _evict_one(self, eligible: Callable[[str], bool] = lambda key: True) -> None:
        """Stop the longest-idle container (of an ``eligible`` pool) so a waiting pool can start one."""
        if self._evicting:
            return
        candidates = [
            (t, p)
            for k, p in self.pools.items()
            if eligible(k) and (t := p.idle_since()) is not None
        ]
        if not candidates:
            return
        pool = min(candidates, key=lambda tp: tp[0])[1]
        self._evicting = True
        try:
            self._perform(pool, pool.evict_idle(time.monotonic()))
        finally:
            self._evicting = False

    def app_changed(self, app_id: str) -> None:
        """The app was created or redeployed: read its state afresh when next asked."""
        self._app_running.pop(app_id, None)

    def app_running(self, app_id: str) -> bool:
        running = self._app_running.get(app_id)
        if running is None:
            app = self.store.get_app(app_id)
            running = self._app_running[app_id] = bool(app and app["state"] == "running")
        return running

    # -- calls -----------------------------------------------------------------
    def _callable(self, function_id: str) -> tuple[FunctionSpec, str]:
        """The function's spec and app id, if a call or request can run now (its app runs, its GPUs exist)."""
        spec, app_id = self.function_spec(function_id)
        if not self.app_running(app_id):
            raise NotFoundError(f"app of function {spec.tag!r} is not running")
        if spec.gpu and (problem := self.gpus.check(spec.gpu)):
            raise ResourceUnavailableError(f"{spec.tag}: {problem}")
        return spec, app_id

    def create_call(self, body: dict[str, Any], creator_app: str | None = None) -> CallState:
        function_id = body["function_id"]
        spec, app_id = self._callable(function_id)
        params = body.get("params")
        if params and not spec.is_class:
            raise InvalidError("parameters were given for a function that is not a class")
        call = {
            "id": body["call_id"],
            "function_id": function_id,
            "app_id": app_id,
            "kind": body.get("kind", "single"),
            "params": params,
            "method": body.get("method"),
            "n_inputs": len(body["inputs"]) if body.get("closed") else None,
            "spec_hash": self.spec_hash(function_id),
        }
        rows = self._input_rows(body["inputs"])
        waited = bool(body.get("wait")) and bool(body.get("closed"))
        fresh = self.store.add_call(call, rows, commit=not waited)
        state = self.calls.get(call["id"])
        if state is None:
            self.meter.call_made(app_id, function_id, time.time())
            if self.tracer.on:
                app_name, tag = self.metric_labels(function_id, app_id)
                self.tracer.call_created(call["id"], app_name, tag, body.get("traceparent"))
            state = CallState(
                call["id"],
                function_id,
                app_id,
                self._ensure_pool(function_id, params),
                call["kind"],
                call["n_inputs"],
                0,
                method=call["method"],
                creator_app=creator_app,
            )
            self.calls[call["id"]] = state
        self._enqueue(state, fresh, rows, body.get("method"))
        return state

    def put_inputs(
        self, call_id: str, items: Sequence[dict[str, Any]], n_inputs: int | None
    ) -> None:
        state = self.call_state(call_id)
        rows = self._input_rows(items)
        fresh = self.store.add_inputs(call_id, rows, n_inputs)
        if n_inputs is not None:
            state.n_inputs = n_inputs
        self._enqueue(state, fresh, rows, state.method)
        state.wake()

    def _input_rows(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for item in items:
            args = item.get("args")
            if args is not None and len(args) > MAX_INLINE_BYTES:
                rows.append({"idx": item["idx"], "blob_id": self.blobs.put(args)})
            else:
                rows.append({"idx": item["idx"], "args": args, "blob_id": item.get("blob_id")})
        return rows

    def _enqueue(
        self,
        state: CallState,
        fresh: list[tuple[int, int]],
        rows: list[dict[str, Any]],
        method: str | None,
    ) -> None:
        if not fresh:
            return
        pool = self.pools[state.pool_key]
        # FIFO: once a pool spills, later inputs queue behind the spilled ones.
        room = self.window.room(pool)
        keep, over = fresh[: max(room, 0)], fresh[max(room, 0) :]
        by_idx = {r["idx"]: r for r in rows} if keep else {}
        if self.tracer.on:
            for _, idx in fresh:
                self.tracer.queued(state.id, idx)
        for input_id, idx in keep:
            row = by_idx[idx]
            self.inputs[input_id] = InputState(
                input_id,
                state.id,
                idx,
                state.pool_key,
                method,
                keep_in_memory(row.get("args")),
                row.get("blob_id"),
            )
        if over:
            self.window.spill(pool, state.id, method, [i for i, _ in over])
        self._perform(pool, pool.enqueue([i for i, _ in keep], time.monotonic()))

    def call_state(self, call_id: str) -> CallState:
        state = self.calls.get(call_id)
        if state is None:
            row = self.store.get_call(call_id)
            if row is None:
                raise NotFoundError(f"no function call {call_id!r}")
            key = self._ensure_pool(row["function_id"], row["params"])
            state = CallState(
                call_id,
                row["function_id"],
                row["app_id"],
                key,
                row["kind"],
                row["n_inputs"],
                self.store.count_final_outputs(call_id),
                method=row["method"],
            )
            self.calls[call_id] = state
        return state

    async def wait_outputs(
        self, call_id: str, after: int, timeout: float, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        state = self.call_state(call_id)
        deadline = time.monotonic() + max(0.0, min(timeout, 55.0))
        while True:
            rows = self.store.outputs_after(call_id, after, limit)
            if rows or state.done or time.monotonic() >= deadline:
                return rows, state.done and len(rows) < limit
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiters.append(fut)
            try:
                await asyncio.wait_for(fut, deadline - time.monotonic())
            except TimeoutError:
                pass

    def cancel_call(self, call_id: str) -> None:
        state = self.call_state(call_id)
        ids = self.store.pending_input_ids_of_call(call_id)
        if not ids:
            return
        self.window.forget(state.pool_key, call_id)
        pool = self.pools.get(state.pool_key)
        if pool is not None:
            self._perform(pool, pool.cancel(ids, time.monotonic()))
        err = serialize_exception(CallCancelledError(f"function call {call_id} was cancelled"))
        self._finalize(self.window.end_rows(ids, "cancelled", err), ids)

    # -- apps ----------------------------------------------------------------
    async def stop_app(self, app_id: str, wait: float = 5.0) -> None:
        self.store.set_app_state(app_id, "stopped")
        self._app_running[app_id] = False
        handles = []
        for key, info in self.pool_info.items():
            if info.app_id == app_id:
                pool = self.pools[key]
                handles += [self.containers[c] for c in pool.containers if c in self.containers]
                self.window.forget(key)
                self._perform(pool, pool.stop_all())
        if self.gateway is not None:
            await self.gateway.unpublish(app_id)
        if self.sandboxes is not None:  # an app's sandboxes end with it, as in Modal
            for sandbox in self.sandboxes.running(app_id):
                self.sandboxes.terminate(sandbox["sandbox_id"], "was terminated: its app stopped")
        stopped = serialize_exception(CallCancelledError("the app was stopped"))
        for input_id in [i for i, info in self.inputs.items() if info.web is not None]:
            if self.pool_info[self.inputs[input_id].pool_key].app_id == app_id:
                web_inputs.done(self, input_id, "cancelled", stopped)
        ids = self.store.pending_input_ids_of_app(app_id)
        if ids:
            err = serialize_exception(
                CallCancelledError("the app was stopped before this input ran")
            )
            self._finalize(self.window.end_rows(ids, "cancelled", err), ids)
        if handles and wait > 0:
            await asyncio.wait(
                [asyncio.create_task(h.exited.wait()) for h in handles], timeout=wait
            )
            if self.volumes is not None:
                await self.volumes.settle([h.id for h in handles], timeout=max(wait, 30.0))
        await self.logs.flush()
        self.logs.wake(app_id)

    def describe_container(self, container_id: str) -> dict[str, Any] | None:
        """What ``ketch container list`` shows of a live or lately exited container."""
        handle = self.containers.get(container_id)
        if handle is None:
            return self.exited_containers.get(container_id)
        info = self.pool_info[handle.pool_key]
        return {
            "container_id": container_id,
            "app_id": info.app_id,
            "function": info.spec.tag,
            "started_at": handle.started_at,
            "state": "running" if handle.writer is not None else "starting",
            "exited_at": None,
            "reason": None,
        }

    def live_containers(self, app_id: str | None = None) -> list[dict[str, Any]]:
        rows = [self.describe_container(c) for c in self.containers]
        return [r for r in rows if r is not None and app_id in (None, r["app_id"])]

    def stop_container(self, container_id: str) -> None:
        """Stop one container (as scale-down does: what it was running fails over)."""
        if container_id not in self.containers:
            raise NotFoundError(f"no running container {container_id!r}")
        self._stop_container(container_id)

    def app_container_count(self, app_id: str) -> int:
        return sum(
            1
            for c in self.containers.values()
            if not c.exited.is_set() and self.pool_info[c.pool_key].app_id == app_id
        )

    # -- actions -------------------------------------------------------------
    def _perform(
        self,
        pool: sm.Pool,
        actions: list[sm.Action],
        fail_payload: bytes | None = None,
        crash: bool = False,
    ) -> None:
        rows: list[dict[str, Any]] = []  # outputs of Complete and Fail, for one _finalize
        done: list[int] = []
        for action in actions:
            if isinstance(action, sm.Assign):
                self._send_inputs(action.container_id, action.input_ids)
            elif isinstance(action, sm.Complete):
                self._perform_complete(action, rows, done)
            elif isinstance(action, sm.Retry):
                self._perform_retry(action)
            elif isinstance(action, sm.Fail):
                self._perform_fail(action, rows, done, fail_payload, crash)
            elif isinstance(action, sm.StartContainer):
                self._perform_start(pool, action)
            elif isinstance(action, sm.StopContainer):
                self._stop_container(action.container_id)
            elif isinstance(action, sm.CancelOnContainer):
                for member in [action.container_id, *gangs.others(self, action.container_id)]:
                    self._send(member, {"t": "cancel", "ids": list(action.input_ids)})
        if rows or done:
            self._finalize(rows, done)
        self.window.perhaps_refill(pool)

    def _perform_complete(
        self, action: sm.Complete, rows: list[dict[str, Any]], done: list[int]
    ) -> None:
        row = self._stash.pop(action.input_id, None)
        if action.input_id < 0:
            web_inputs.done(
                self,
                action.input_id,
                row["status"] if row else "cancelled",
                row["data"] if row else None,
            )
            return
        if row is not None:
            rows.append(row)
        done.append(action.input_id)

    def _perform_fail(
        self,
        action: sm.Fail,
        rows: list[dict[str, Any]],
        done: list[int],
        fail_payload: bytes | None,
        crash: bool,
    ) -> None:
        payload = fail_payload or serialize_exception(ContainerCrashError(action.reason))
        status = "init_failure" if fail_payload and not crash else "crash"
        if action.input_id < 0:
            web_inputs.done(self, action.input_id, status, payload)
            return
        rows.append(self._row(action.input_id, status, payload))
        done.append(action.input_id)

    def _perform_retry(self, action: sm.Retry) -> None:
        self._stash.pop(action.input_id, None)
        self.store.record_attempt(action.input_id, action.attempt)
        info = self.inputs.get(action.input_id)
        logger.info(
            "retrying input %s (attempt %d) in %.1fs",
            info and info.idx,
            action.attempt,
            action.delay,
        )

    def _perform_start(self, pool: sm.Pool, action: sm.StartContainer) -> None:
        # Registered now, so that a stop in this same tick finds it.
        size = self.pool_info[pool.key].spec.cluster_size
        ids = gangs.member_ids(action.container_id, size)
        handles = []
        for rank, container_id in enumerate(ids):
            handle = ContainerHandle(container_id, pool.key, "kc-" + secrets.token_urlsafe(24))
            if size > 1:
                handle.gang, handle.leader = (ids, None) if rank == 0 else (None, ids[0])
            self.containers[handle.id] = handle
            self._container_tokens[handle.token] = handle.id
            handles.append(handle)
        info = self.pool_info[pool.key]
        for rank, handle in enumerate(handles):
            self.meter.start(handle.id, info.app_id, info.function_id, info.spec)
            gpu_env = starts.allocate_gpus(self, pool, handle.id)
            if size > 1:
                gpu_env.update(gangs.member_env(ids, rank))
            spawn(starts.start_container(self, pool, handle, gpu_env), name=f"start {handle.id}")

    def _row(
        self, input_id: int, status: str, data: bytes | None, detail: Any = None
    ) -> dict[str, Any]:
        info = self.inputs[input_id]
        row = {"call_id": info.call_id, "idx": info.idx, "status": status, "data": data}
        if isinstance(detail, dict):  # text the container made (reprs, a traceback)
            kept = {k: str(detail[k])[:DETAIL_MAX] for k in DETAIL_KEYS if k in detail}
            row["detail"] = pack(kept) if kept else None
        return row

    def _finalize(self, rows: list[dict[str, Any]], done: Sequence[int]) -> None:
        for row in rows:
            data = row.get("data")
            if data is not None and len(data) > MAX_INLINE_BYTES:
                row["blob_id"] = self.blobs.put(data)
                row["data"] = None
        self.store.record_outputs(rows, done)
        if self.tracer.on:
            self.tracer.outputs(rows, FINAL_STATUSES)
        touched: dict[str, int] = {}
        ended: dict[tuple[str, str], int] = {}  # (call, outcome) -> inputs, for metrics
        for row in rows:
            final = row["status"] in FINAL_STATUSES
            touched[row["call_id"]] = touched.get(row["call_id"], 0) + int(final)
            if final:
                key = (row["call_id"], row["status"])
                ended[key] = ended.get(key, 0) + 1
        for (call_id, outcome), n in ended.items():
            if (call := self.calls.get(call_id)) is not None:
                labels = self.metric_labels(call.function_id, call.app_id)
                self.metrics.count_calls((*labels, outcome), n)
        for input_id in done:
            self.inputs.pop(input_id, None)
        for call_id, n in touched.items():
            state = self.calls.get(call_id)
            if state is not None:
                state.n_final += n
                state.wake()
                if state.done:
                    del self.calls[call_id]  # reloaded from the store if asked again
                    self.tracer.finished(call_id)

    # -- containers ----------------------------------------------------------
    def source_spec(self, spec: FunctionSpec) -> FunctionSpec:
        return starts.source_spec(self, spec)

    def _stop_container(self, container_id: str) -> None:
        handle = self.containers.get(container_id)
        if handle is not None and handle.gang:
            for member in gangs.others(self, container_id):
                self._stop_one(member)
        self._stop_one(container_id)

    def _stop_one(self, container_id: str) -> None:
        logger.info("stopping container %s", container_id)
        if not self._send(container_id, {"t": "stop"}):
            handle = self.containers.get(container_id)
            if handle is not None:  # still starting: the worker may not have it yet
                handle.stop_requested = True
            self.worker.terminate(container_id, 1.0)
            return
        asyncio.get_running_loop().call_later(
            STOP_GRACE_S, self.worker.terminate, container_id, 2.0
        )

    def _send(self, container_id: str, msg: dict[str, Any]) -> bool:
        from .._wire import encode

        handle = self.containers.get(container_id)
        if handle is None or handle.writer is None or handle.writer.is_closing():
            return False
        handle.writer.write(encode(msg))
        return True

    def _send_inputs(self, container_id: str, input_ids: Sequence[int]) -> None:
        items: list[dict[str, Any]] = []
        now = time.monotonic()
        waited: list[float] = []
        for input_id in input_ids:
            info = self.inputs[input_id]
            waited.append(now - info.queued_at)
            if info.web_request is not None:
                info.container_id = container_id
                items.append({"id": input_id, "method": info.method, "web": info.web_request})
                continue
            args, blob_id = info.args, info.blob_id
            if args is None:
                args, blob_id = self.store.input_args(input_id)
            if args is None and blob_id is not None:
                args = self.blobs.get(blob_id)
            item = {"id": input_id, "args": args, "method": info.method, "call": info.call_id}
            if info.idx < DETAIL_FIRST:  # the reprs ``ketch call show`` prints
                item["detail"] = True
            items.append(item)
            if self.tracer.on:
                self.tracer.sent(info.call_id, info.idx, container_id)
        if input_ids and (pool_info := self.pool_info.get(self.inputs[input_ids[0]].pool_key)):
            labels = self.metric_labels(pool_info.function_id, pool_info.app_id)
            self.metrics.queue_seconds.observe_many(labels, waited)
        if not self._send(container_id, {"t": "inputs", "items": items}):
            logger.warning("container %s is gone; its inputs fail over when it exits", container_id)
            return
        for member in gangs.others(self, container_id):  # every member of a gang runs it
            self._send(member, {"t": "inputs", "items": items})
        for input_id in input_ids:
            info = self.inputs[input_id]
            for msg in info.web_pending or ():
                self._send(container_id, {"t": "web_in", "id": input_id, **msg})
            info.web_pending = None

    def container_token_ok(self, container_id: str, token: str) -> bool:
        handle = self.containers.get(container_id)
        return handle is not None and secrets.compare_digest(handle.token, token)

    def container_caller(self, token: str) -> tuple[str, str] | None:
        """``(container id, app id)`` of the live container holding ``token``."""
        container_id = self._container_tokens.get(token)
        handle = self.containers.get(container_id) if container_id else None
        if handle is None or handle.exited.is_set():
            return None
        info = self.pool_info.get(handle.pool_key)
        if info is None or not container_id or info.spec.restrict_modal_access:
            return None  # (restrict_modal_access: its token opens its channel, nothing else)
        return (container_id, info.app_id)

    def container_hello(
        self, container_id: str, token: str, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        if self.sandboxes is not None and self.sandboxes.owns(container_id):
            return self.sandboxes.hello(container_id, token, writer)
        if not self.container_token_ok(container_id, token):
            raise InvalidError("unknown container or bad token")
        handle = self.containers[container_id]
        handle.writer = writer
        info = self.pool_info[handle.pool_key]
        function_ids = {f["tag"]: f["id"] for f in self.store.app_functions(info.app_id)}
        return {
            "t": "init",
            "spec": info.spec.to_wire(),
            "params": info.params,
            "app_id": info.app_id,
            "function_ids": function_ids,
        }

    def container_message(self, container_id: str, msg: dict[str, Any]) -> None:
        handle = self.containers.get(container_id)
        if handle is None or msg.get("t") in ("out", "exit", "fs", "attach"):  # commands'
            if self.sandboxes is not None:
                self.sandboxes.message(container_id, msg)
            return
        pool = self.pools[handle.pool_key]
        now = time.monotonic()
        kind = msg.get("t")
        if handle.leader is not None:  # a gang member: the leader speaks for the gang
            gangs.member_message(self, handle, pool, msg, now)
            return
        if kind == "ready":
            if not handle.ready and (pool_info := self.pool_info.get(handle.pool_key)):
                self.metrics.cold_start_seconds.observe(
                    self.metric_labels(pool_info.function_id, pool_info.app_id),
                    time.time() - handle.started_at,
                )
            handle.ready = True
            if handle.gang and not gangs.ready(self, handle):
                return  # when the last member is ready
            self._perform(pool, pool.container_ready(container_id, now))
        elif kind == "init_failed":
            self._perform(
                pool, pool.container_init_failed(container_id, now, "init failed"), msg["error"]
            )
        elif kind == "outputs":
            self._container_outputs(handle, pool, msg["items"], now)
        elif kind == "web":
            info = self.inputs.get(msg.get("id", 0))
            if info is not None and info.web is not None:
                info.web.event(msg)

    def _container_outputs(
        self, handle: ContainerHandle, pool: sm.Pool, items: list[dict[str, Any]], now: float
    ) -> None:
        results = []
        item_rows = []
        c = pool.containers.get(handle.id)
        sharing = min(len(c.assigned), pool.policy.slots) if c is not None else 1
        for item in items:
            input_id = item["id"]
            if input_id not in self.inputs:
                continue  # cancelled or already failed over
            if item["status"] == "item":
                row = self._row(input_id, "item", item.get("data"))
                row["gen_index"] = item.get("gen_index")
                item_rows.append(row)
                continue
            detail = item.get("detail")
            if isinstance(detail, dict):  # (only the first inputs and failures have one)
                detail["container"] = handle.id
            self._stash[input_id] = self._row(input_id, item["status"], item.get("data"), detail)
            handle.last_call = self.inputs[input_id].call_id
            seconds = float(item.get("duration", 0.0))
            self.meter.input_done(handle.id, handle.last_call, seconds, sharing)
            results.append(
                (input_id, OUTCOME.get(item["status"], "failure"), float(item.get("duration", 0.0)))
            )
        if item_rows:
            self._finalize(item_rows, [])
        if results:
            if info := self.pool_info.get(pool.key):
                labels = self.metric_labels(info.function_id, info.app_id)
                self.metrics.call_seconds.observe_many(labels, [r[2] for r in results])
            self._perform(pool, pool.container_outputs(handle.id, results, now))

    def container_exited(self, container_id: str, reason: str, preempted: bool = False) -> None:
        """``preempted``: lost with its node; its inputs run again without counting as retries."""
        if self.sandboxes is not None and self.sandboxes.owns(container_id):
            self.sandboxes.exited(container_id, reason)
            return
        self.gpus.release(container_id)
        self.meter.stop(container_id)
        if self.volumes is not None:
            self.volumes.release(container_id)  # commits what it wrote to its Volumes
        spawn(self.tunnels.close(container_id), name=f"close tunnels of {container_id}")
        if self.sandboxes is not None:  # commands run in it (`ketch container exec`) end
            self.sandboxes.exited(container_id, reason)
        seen = self.describe_container(container_id)
        handle = self.containers.pop(container_id, None)
        if handle is None:
            return
        if seen is not None:
            seen.update(state="exited", exited_at=time.time(), reason=reason)
            self.exited_containers[container_id] = seen
            while len(self.exited_containers) > EXITED_KEPT:
                self.exited_containers.popitem(last=False)
        self._container_tokens.pop(handle.token, None)
        logger.info("container %s %s", container_id, reason)
        handle.exited.set()
        if handle.leader is not None or handle.gang:
            gangs.member_exited(self, handle, reason)
        if handle.gang_failure:
            reason, preempted = handle.gang_failure, False
        pool = self.pools.get(handle.pool_key)
        if pool is not None:
            actions = pool.container_exited(
                container_id, time.monotonic(), f"container {container_id} {reason}", preempted
            )
            oom = None
            if reason.startswith("ran out of memory"):
                oom = serialize_exception(OutOfMemoryError(f"container {container_id} {reason}"))
            self._perform(pool, actions, oom, crash=oom is not None)

    def container_log(self, container_id: str, stream: str, text: str) -> None:
        handle = self.containers.get(container_id)
        if handle is None:
            if self.sandboxes is not None:
                self.sandboxes.log(container_id, stream, text)
            return
        info = self.pool_info[handle.pool_key]
        self.logs.add(info.app_id, info.spec.tag, container_id, stream, text, call_of(self, handle))


def _policy(spec: FunctionSpec) -> sm.PoolPolicy:
    return sm.PoolPolicy(
        max_inputs=spec.max_inputs,
        target_inputs=spec.target_inputs,
        batch_size=spec.batch_max_size,
        min_containers=spec.min_containers,
        max_containers=spec.max_containers,
        buffer_containers=spec.buffer_containers,
        scaledown_window=spec.scaledown_window,
        lifetime_inputs=spec.container_max_inputs,
        # A web request is never sent twice: it may have been half answered.
        retries=Retries(0) if spec.web_methods() else spec.retries(),
    )
