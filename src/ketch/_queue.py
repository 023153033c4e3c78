"""``ketch.Queue``: a durable FIFO queue with partitions (Modal's ``modal.Queue``).

Items are pickled with cloudpickle. A blocking ``get`` waits on the control
plane until another process puts an item (a long poll, no polling sleeps),
and raises ``queue.Empty`` when its timeout passes, as Modal's does.

Example::

    q = ketch.Queue.from_name("jobs", create_if_missing=True)
    q.put_many([1, 2, 3])
    q.get()                      # 1
    q.get(block=False)           # 2
    q.put("x", partition="user-7")
    q.len(partition="user-7")    # 1
"""

from __future__ import annotations

import queue
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ._object import _Object, public
from ._serialization import deserialize, serialize
from .exception import PayloadTooLargeError

MAX_ITEM_BYTES = 64 * 1024 * 1024
SERVER_WAIT_S = 50.0


def _pack(value: Any) -> bytes:
    data = serialize(value, "a Queue item")
    if len(data) > MAX_ITEM_BYTES:
        raise PayloadTooLargeError(
            f"a Queue item is {len(data)} bytes pickled; the limit is {MAX_ITEM_BYTES // 2**20} MiB"
        )
    return data


class _Queue(_Object):
    """A named queue shared by every function and client of the control plane."""

    _kind = "queue"

    async def put(
        self,
        v: Any,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = 24 * 3600,
    ) -> None:
        """Add one item (``queue.Full`` when the partition holds 100,000 items)."""
        await self.put_many([v], block, timeout, partition=partition, partition_ttl=partition_ttl)

    async def put_many(
        self,
        vs: Sequence[Any],
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = 24 * 3600,
    ) -> None:
        """Add several items in order, in one request."""
        items = [_pack(v) for v in vs]
        if not items:
            return
        body = {"items": items, "partition": partition, "partition_ttl": partition_ttl}
        reply = await self._rpc("QueuePut", body)
        if reply.get("full"):
            raise queue.Full(f"queue partition {partition or '(default)'} is full")

    async def get(
        self, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> Any:
        """The oldest item; blocks until one arrives (``queue.Empty`` when ``timeout`` passes).

        With ``block=False`` an empty queue gives ``None`` at once, as Modal's does (its
        ``timeout`` is then ignored).
        """
        items = await self._get(1, block, timeout, partition)
        if not items:
            if not block:
                return None
            raise queue.Empty()
        return items[0]

    async def get_many(
        self,
        n_values: int,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
    ) -> list[Any]:
        """Up to ``n_values`` items (at least one when blocking, unless the timeout passes)."""
        return await self._get(max(1, int(n_values)), block, timeout, partition)

    async def _get(
        self, n: int, block: bool, timeout: float | None, partition: str | None
    ) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.0
            if block:
                left = SERVER_WAIT_S if deadline is None else max(0.0, deadline - time.monotonic())
                wait = min(left, SERVER_WAIT_S)
            reply = await self._rpc(
                "QueueGet", {"n": n, "partition": partition, "wait": wait}, timeout=wait + 60
            )
            if (
                reply["items"]
                or not block
                or (deadline is not None and time.monotonic() >= deadline)
            ):
                return [deserialize(x) for x in reply["items"]]

    async def len(self, *, partition: str | None = None, total: bool = False) -> int:
        """Items in ``partition`` (or in every partition with ``total=True``)."""
        return int((await self._rpc("QueueLen", {"partition": partition, "total": total}))["len"])

    async def clear(self, *, partition: str | None = None, all: bool = False) -> None:
        """Remove the items of ``partition`` (or of every partition with ``all=True``)."""
        await self._rpc("QueueClear", {"partition": partition, "all": all})

    async def iterate(
        self, *, partition: str | None = None, item_poll_timeout: float = 0.0
    ) -> AsyncIterator[Any]:
        """Yield items without removing them; with ``item_poll_timeout``, wait that long for more."""
        after = 0
        idle_since = time.monotonic()
        while True:
            reply = await self._rpc("QueuePeek", {"partition": partition, "after": after})
            for seq, data in reply["items"]:
                after = seq
                yield deserialize(data)
            if reply["items"]:
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since >= item_poll_timeout:
                return
            import asyncio

            await asyncio.sleep(min(0.1, item_poll_timeout))


Queue: Any = public(_Queue, "Queue")
