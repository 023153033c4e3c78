"""Firing the schedules of deployed apps' functions.

One row per scheduled function (``schedules``): its schedule, the time of
its next run, and its last run's call. A run is an ordinary call of the
function with no arguments (kind ``schedule``), so it has logs, a result, a
failure and retries like any other, and ``FunctionCall.from_id`` finds it.

- Exactly once: a run's call and the row's new ``next_at`` are committed in
  one transaction, so a crash fires a run either not at all (it fires after
  the restart) or once, never twice.
- Overlap: a run that is due while the previous run of the same function is
  still going is skipped (a line in the app's logs says so); the next one is
  scheduled as usual.
- Downtime: runs missed while the control plane was down are not all made
  up: the first due run fires once at start, the next is counted from then.
- Deploys: a redeploy restarts a ``Period`` (as on Modal); a ``Cron`` keeps its
  times. Stopped apps fire nothing; their rows stay for a later deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle
from sqlalchemy import Column, Float, LargeBinary, String, Table, delete, select, update

from .._ids import new_id
from .._serialization import pack, unpack
from ..exception import Error
from ..schedule import next_run
from .store import apps, metadata

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

MAX_SLEEP_S = 1.0

schedules = Table(
    "schedules",
    metadata,
    Column("function_id", String, primary_key=True),
    Column("app_id", String, nullable=False),
    Column("schedule", LargeBinary, nullable=False),  # msgpack of the schedule's wire form
    Column("next_at", Float, nullable=False),
    Column("last_call_id", String),
    Column("last_fired_at", Float),
)

_NO_ARGS = cloudpickle.dumps(((), {}))


class ScheduleRunner:
    def __init__(self, dispatcher: Dispatcher, clock: Callable[[], float] = time.time) -> None:
        self.d = dispatcher
        self.store = dispatcher.store
        self.clock = clock  # wall-clock seconds; tests give their own
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def sync(self, app_id: str, functions: list[dict[str, Any]]) -> None:
        """A deploy of ``app_id``: schedule its functions' schedules (and drop the ones it no longer has)."""
        now = self.clock()
        conn = self.store.conn
        have = {
            r["function_id"]: r
            for r in conn.execute(select(schedules).where(schedules.c.app_id == app_id)).mappings()
        }
        keep = set()
        for fn in functions:
            wire = fn["spec"].schedule
            if not wire:
                continue
            keep.add(fn["id"])
            row = have.get(fn["id"])
            if row is not None and unpack(row["schedule"]) == wire and wire["type"] == "cron":
                continue  # a Cron keeps its times across deploys
            values = {"app_id": app_id, "schedule": pack(wire), "next_at": next_run(wire, now)}
            if row is None:
                conn.execute(schedules.insert().values(function_id=fn["id"], **values))
            else:
                conn.execute(
                    update(schedules).where(schedules.c.function_id == fn["id"]).values(**values)
                )
        gone = set(have) - keep
        if gone:
            conn.execute(delete(schedules).where(schedules.c.function_id.in_(gone)))
        conn.commit()
        self.changed.set()

    def describe(self, app_id: str) -> list[dict[str, Any]]:
        """The app's schedules: function, schedule, next run, last run and its state."""
        rows = (
            self.store.conn.execute(select(schedules).where(schedules.c.app_id == app_id))
            .mappings()
            .all()
        )
        out = []
        for row in rows:
            spec = self.d.function_spec(row["function_id"])[0]
            last = None
            if row["last_call_id"]:
                state = self.d.call_state(row["last_call_id"])
                outputs = self.store.outputs_after(row["last_call_id"], 0, 1) if state.done else []
                last = {
                    "call_id": row["last_call_id"],
                    "at": row["last_fired_at"],
                    "status": outputs[0]["status"] if outputs else "running",
                }
            out.append(
                {
                    "tag": spec.tag,
                    "schedule": unpack(row["schedule"]),
                    "next_at": row["next_at"],
                    "last": last,
                }
            )
        return out

    def next_runs(self) -> dict[str, float]:
        """app id -> its earliest next run."""
        rows = self.store.conn.execute(select(schedules.c.app_id, schedules.c.next_at)).all()
        out: dict[str, float] = {}
        for app_id, next_at in rows:
            out[app_id] = min(next_at, out.get(app_id, next_at))
        return out

    async def _run(self) -> None:
        while True:
            try:
                wait = self._fire_due()
            except Exception:
                logger.exception("firing schedules failed")
                wait = MAX_SLEEP_S
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, wait))
            except TimeoutError:
                pass

    def _fire_due(self) -> float:
        """Fire every due run; seconds until the next one is due (at most ``MAX_SLEEP_S``).

        Only running apps' rows count: a stopped app's row keeps its past ``next_at``
        for a later deploy, and must not make the wait negative (a busy loop).
        """
        now = self.clock()
        live = schedules.join(apps, apps.c.id == schedules.c.app_id)
        running = apps.c.state == "running"
        rows = (
            self.store.conn.execute(
                select(schedules).select_from(live).where(running, schedules.c.next_at <= now)
            )
            .mappings()
            .all()
        )
        for row in rows:
            if self.d.app_running(row["app_id"]):
                self._fire(row, now)
        soonest = self.store.conn.execute(
            select(schedules.c.next_at)
            .select_from(live)
            .where(running)
            .order_by(schedules.c.next_at)
            .limit(1)
        ).scalar()
        return MAX_SLEEP_S if soonest is None else min(MAX_SLEEP_S, soonest - self.clock())

    def _fire(self, row: Any, now: float) -> None:
        wire = unpack(row["schedule"])
        next_at = next_run(wire, row["next_at"])
        if next_at <= now:  # runs were missed (the control plane was down): count from now
            next_at = next_run(wire, now)
        spec, app_id = self.d.function_spec(row["function_id"])
        values: dict[str, Any] = {"next_at": next_at}
        last = row["last_call_id"]
        if last and not self.d.call_state(last).done:
            self.d.logs.add(
                app_id,
                spec.tag,
                "",
                "stderr",
                f"skipped a scheduled run of {spec.tag}: the previous run ({last}) is still going\n",
            )
        else:
            call_id = new_id("fc")
            try:
                # ``wait`` leaves the call's rows uncommitted: they commit with next_at below, in one transaction.
                self.d.create_call(
                    {
                        "call_id": call_id,
                        "function_id": row["function_id"],
                        "kind": "schedule",
                        "closed": True,
                        "wait": 1,
                        "inputs": [{"idx": 0, "args": _NO_ARGS}],
                    }
                )
            except Error as exc:
                self.d.logs.add(
                    app_id,
                    spec.tag,
                    "",
                    "stderr",
                    f"a scheduled run of {spec.tag} could not start: {exc}\n",
                )
            else:
                values.update(last_call_id=call_id, last_fired_at=now)
                logger.info("scheduled run of %s: %s", spec.tag, call_id)
        self.store.conn.execute(
            update(schedules).where(schedules.c.function_id == row["function_id"]).values(**values)
        )
        self.store.conn.commit()
