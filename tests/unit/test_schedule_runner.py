"""The schedule runner's timing, against a real store and an injected clock (no sleeping).

The end-to-end test (tests/e2e/test_e2e_schedules.py) proves a deployed schedule
fires through the real CLI and survives restarts; these prove when it fires.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ketch._serialization import pack
from ketch._spec import FunctionSpec
from ketch.schedule import Cron, Period
from ketch.server import schedules as sched
from ketch.server.store import Store

T0 = 1_800_000_000.0  # a fixed wall-clock time


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class FakeCall:
    done: bool = False


class FakeDispatcher:
    """What the runner asks of the dispatcher: app state, specs, calls and logs."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.created: list[dict[str, Any]] = []
        self.calls: dict[str, FakeCall] = {}
        self.log_lines: list[str] = []
        self.logs = self

    def add(self, app_id: str, tag: str, container_id: str, stream: str, text: str) -> None:
        self.log_lines.append(text)

    def app_running(self, app_id: str) -> bool:
        app = self.store.get_app(app_id)
        return bool(app and app["state"] == "running")

    def function_spec(self, function_id: str) -> tuple[FunctionSpec, str]:
        return FunctionSpec(tag="tick", module_name="m", qualname="tick"), "ap-1"

    def call_state(self, call_id: str) -> FakeCall:
        return self.calls[call_id]

    def create_call(self, body: dict[str, Any]) -> None:
        self.created.append(body)
        self.calls[body["call_id"]] = FakeCall()


@pytest.fixture
def runner(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    clock = Clock(T0)
    d = FakeDispatcher(store)
    store.create_app("ap-1", "demo", True, [{"id": "fu-1", "tag": "tick", "spec": pack({})}])
    r = sched.ScheduleRunner(d, clock=clock)
    yield r, d, clock
    store.close()


def _deploy(r: sched.ScheduleRunner, schedule: Any) -> None:
    spec = FunctionSpec(tag="tick", module_name="m", qualname="tick", schedule=schedule.to_wire())
    r.sync("ap-1", [{"id": "fu-1", "spec": spec}])


def _next_at(r: sched.ScheduleRunner) -> float:
    return float(r.store.conn.execute(select(sched.schedules.c.next_at)).scalar_one())


def test_a_period_fires_when_due_and_waits_for_the_next(runner):
    r, d, clock = runner
    _deploy(r, Period(seconds=30))
    assert _next_at(r) == T0 + 30
    assert r._fire_due() == sched.MAX_SLEEP_S and d.created == []
    clock.now = T0 + 29.5
    assert r._fire_due() == pytest.approx(0.5)
    clock.now = T0 + 30
    r._fire_due()
    assert len(d.created) == 1 and d.created[0]["kind"] == "schedule"
    assert _next_at(r) == T0 + 60


def test_a_run_due_while_the_last_still_runs_is_skipped(runner):
    r, d, clock = runner
    _deploy(r, Period(seconds=10))
    clock.now = T0 + 10
    r._fire_due()
    clock.now = T0 + 20  # the first run has not finished
    r._fire_due()
    assert len(d.created) == 1
    assert "skipped a scheduled run of tick: the previous run (fc-" in d.log_lines[0]
    assert _next_at(r) == T0 + 30
    d.calls[d.created[0]["call_id"]].done = True
    clock.now = T0 + 30
    r._fire_due()
    assert len(d.created) == 2


def test_missed_runs_fire_once_and_the_next_counts_from_now(runner):
    r, d, clock = runner
    _deploy(r, Period(seconds=10))
    clock.now = T0 + 95  # down for nine periods
    r._fire_due()
    assert len(d.created) == 1
    assert _next_at(r) == T0 + 105


def test_a_redeploy_restarts_a_period_but_a_cron_keeps_its_times(runner):
    r, _, clock = runner
    _deploy(r, Period(seconds=30))
    clock.now = T0 + 20
    _deploy(r, Period(seconds=30))
    assert _next_at(r) == T0 + 50
    _deploy(r, Cron("0 3 * * *"))
    first = _next_at(r)
    clock.now = T0 + 40
    _deploy(r, Cron("0 3 * * *"))
    assert _next_at(r) == first


def test_a_stopped_apps_schedule_neither_fires_nor_spins(runner):
    """Regression: a stopped app's past ``next_at`` made the wait negative (a 10 ms busy loop)."""
    r, d, clock = runner
    _deploy(r, Period(seconds=10))
    r.store.set_app_state("ap-1", "stopped")
    clock.now = T0 + 1000
    assert r._fire_due() == sched.MAX_SLEEP_S
    assert d.created == []
    assert r.next_runs() == {"ap-1": T0 + 10}  # the row stays for a later deploy
