"""Container output: buffered into the store, and handed to clients that follow an app."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from .store import LogFilter, Store

if TYPE_CHECKING:
    from .dispatch_state import ContainerHandle
    from .dispatcher import Dispatcher

FLUSH_INTERVAL_S = 0.05


class LogBook:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._buffer: list[dict[str, Any]] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._flusher())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def add(
        self,
        app_id: str,
        tag: str,
        container_id: str,
        stream: str,
        text: str,
        call_id: str | None = None,
    ) -> None:
        self._buffer.append(
            {
                "app_id": app_id,
                "tag": tag,
                "container_id": container_id,
                "stream": stream,
                "text": text,
                "ts": time.time(),
                "call_id": call_id,
            }
        )

    async def flush(self) -> None:
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        self.store.add_logs(rows)
        for app_id in {r["app_id"] for r in rows}:
            self.wake(app_id)

    def wake(self, app_id: str) -> None:
        for fut in self._waiters.pop(app_id, []):
            if not fut.done():
                fut.set_result(None)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def read(
        self,
        app_id: str,
        after: int,
        timeout: float,
        limit: int,
        filters: LogFilter | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """``(rows, cursor)``: rows after ``after`` that pass ``filters``, and the sequence
        number to go on from (past lines the filters skipped). With ``timeout``, waits that
        long for new lines when there are none."""
        rows, cursor = self._page(app_id, after, limit, filters)
        if rows or timeout <= 0:
            return rows, cursor
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(app_id, []).append(fut)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(fut, min(timeout, 55.0))
        return self._page(app_id, cursor, limit, filters)

    def _page(
        self, app_id: str, after: int, limit: int, filters: LogFilter | None
    ) -> tuple[list[dict[str, Any]], int]:
        if filters is None or filters == LogFilter():
            rows = self.store.logs_after(app_id, after, limit)
            return rows, rows[-1]["seq"] if rows else after
        upto = self.store.last_log_seq(app_id)  # first: a line written meanwhile is not skipped
        rows = self.store.logs_after(app_id, after, limit, filters, upto)
        return rows, rows[-1]["seq"] if len(rows) == limit else max(upto, after)

    def prune(self, retention_days: float) -> int:
        """Drop lines older than ``retention_days``; returns how many went."""
        return self.store.prune_logs(time.time() - retention_days * 86400.0)


def call_of(d: Dispatcher, handle: ContainerHandle) -> str | None:
    """The call a container's output line belongs to: the one input it runs, else the one
    it answered last (a line printed just before returning arrives after it); None while
    it runs several at once."""
    pool = d.pools.get(handle.pool_key)
    c = pool.containers.get(handle.id) if pool is not None else None
    running = c.assigned[: pool.policy.slots] if c is not None and pool is not None else []
    if len(running) > 1:
        return None
    if running and (info := d.inputs.get(running[0])) is not None:
        return info.call_id
    return handle.last_call
