"""Queues past the window: a pool keeps at most ``queue_window`` queued inputs in memory.

The rest wait in the store only, as ranges of one call's input ids
``[call id, method, first, last]``, oldest first, so memory does not grow with
a queue's length (issue 17). They come back in order as the window drains
(``refill``); cancelling a call or stopping an app ends them with the rest
(``forget`` and ``end_rows``). The dispatcher owns one ``QueueWindow``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import scheduler as sm
from .dispatch_state import InputState, keep_in_memory

if TYPE_CHECKING:
    from .dispatcher import Dispatcher


class QueueWindow:
    """The spilled inputs of every pool, and the moves between memory and the store."""

    def __init__(self, dispatcher: Dispatcher, size: int) -> None:
        self.d = dispatcher
        self.size = size
        self._ranges: dict[str, collections.deque[list[Any]]] = {}  # by pool key
        self._refilling = False

    def room(self, pool: sm.Pool) -> int:
        """How many new queued inputs the pool takes in memory (none while some wait in the
        store: they are older and come first)."""
        return 0 if pool.key in self._ranges else self.size - len(pool.pending)

    def spill(
        self, pool: sm.Pool, call_id: str, method: str | None, input_ids: Sequence[int]
    ) -> None:
        """Leave these queued inputs in the store; ``refill`` brings them back in order."""
        ranges = self._ranges.setdefault(pool.key, collections.deque())
        for input_id in input_ids:
            last = ranges[-1] if ranges else None
            if last is not None and last[0] == call_id and last[3] == input_id - 1:
                last[3] = input_id
            else:
                ranges.append([call_id, method, input_id, input_id])
        pool.spilled += len(input_ids)

    def perhaps_refill(self, pool: sm.Pool) -> None:
        """Refill once the pool's window is half empty."""
        if pool.key in self._ranges and len(pool.pending) < self.size // 2:
            self.refill(pool)

    def refill(self, pool: sm.Pool) -> None:
        """Bring spilled inputs back into the pool's window, oldest first."""
        if self._refilling:
            return
        self._refilling = True
        try:
            ranges = self._ranges.get(pool.key)
            want = self.size - len(pool.pending)  # queued inputs to bring back
            ids: list[int] = []
            failures: dict[int, int] = {}
            while ranges and len(ids) < want:
                call_id, method, first, last = ranges[0]
                upto = min(last, first + (want - len(ids)) - 1)
                if upto == last:
                    ranges.popleft()
                else:
                    ranges[0][2] = upto + 1
                pool.spilled -= upto - first + 1
                # (inputs of the range that ended meanwhile are not pending: skipped)
                for input_id, call, idx, args, blob_id, attempts in self.d.store.inputs_between(
                    first, upto
                ):
                    self.d.inputs[input_id] = InputState(
                        input_id, call, idx, pool.key, method, keep_in_memory(args), blob_id
                    )
                    ids.append(input_id)
                    if attempts:
                        failures[input_id] = attempts
            if not ranges:
                self._ranges.pop(pool.key, None)
            self.d._perform(pool, pool.enqueue(ids, time.monotonic(), failures))
        finally:
            self._refilling = False

    def forget(self, key: str, call_id: str | None = None) -> None:
        """Forget the spilled inputs of one call (or all) of pool ``key``; the caller ends them."""
        ranges = self._ranges.get(key)
        pool = self.d.pools.get(key)
        if not ranges or pool is None:
            return
        kept = collections.deque(r for r in ranges if call_id is not None and r[0] != call_id)
        for r in ranges:
            if r not in kept:
                pool.spilled -= r[3] - r[2] + 1
        if kept:
            self._ranges[key] = kept
        else:
            self._ranges.pop(key, None)

    def end_rows(self, input_ids: Sequence[int], status: str, err: bytes) -> list[dict[str, Any]]:
        """Output rows for ending these inputs, those in memory and those spilled alike."""
        rows = [self.d._row(i, status, err) for i in input_ids if i in self.d.inputs]
        away = [i for i in input_ids if i not in self.d.inputs]
        for _, call_id, idx in self.d.store.input_places(away) if away else []:
            rows.append({"call_id": call_id, "idx": idx, "status": status, "data": err})
        return rows
