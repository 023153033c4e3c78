"""Schedules through the real CLI: a deployed schedule fires, survives a kill -9, stops with the app.

When runs fire (overlap skips, missed runs, redeploys) is proved against an injected
clock in tests/unit/test_schedule_runner.py; bad schedules in tests/unit/test_spec.py.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = "schedules-demo"
PERIOD_S = 2  # heartbeat's Period in examples/schedules.py
TICKS = "import ketch\nprint('TICKS', sorted(ketch.Dict.from_name('schedules-demo-ticks', create_if_missing=True).values()))\n"


def _fired(env) -> list[float]:
    """When the control plane fired each scheduled run (its call's creation), read off its store."""
    rows = env.sql("SELECT created_at FROM calls WHERE kind = 'schedule' ORDER BY created_at")
    return [float(row[0]) for row in rows]


def _ticks(env) -> list[float]:
    out = env.python("-c", TICKS).check().stdout
    return [float(x) for x in re.findall(r"[\d.]+", out.split("TICKS", 1)[1])]


def test_a_deployed_schedule_fires_survives_a_kill9_and_stops_with_the_app(fresh_ketch_env):
    env = fresh_ketch_env
    env.cli("deploy", "examples/schedules.py", timeout=60).check()
    assert env.wait_until(lambda: len(_ticks(env)) >= 1, timeout=30), "the schedule never fired"
    info = env.cli("app", "info", APP).check().stdout
    assert "schedule heartbeat: Period(seconds=2)" in info, info
    assert re.search(r"next run: \S+ \S+ \(in \d+s\)", info), info
    assert re.search(r"last run: fc-\S+ .*(success|running)", info), info
    assert "Cron('0 3 * * *', timezone='Europe/Paris')" in info, info
    assert re.search(
        r"schedules-demo\s+running\s+deployed.*\(in \d+s\)", env.cli("app", "list").check().stdout
    )

    # After a kill -9 and a restart, runs go on, and never twice for one due time.
    pid = env.server_pid()
    os.kill(pid, signal.SIGKILL)
    assert env.wait_until(lambda: not env.pid_alive(pid), 10)
    env.cli("server", "start", timeout=60).check()
    before = len(_ticks(env))
    assert env.wait_until(lambda: len(_ticks(env)) >= before + 2, timeout=30)
    # When runs were fired (their calls' creation), not when they ran: a run that was in
    # flight at the kill runs again after the restart (calls are at least once), on a
    # cold container, and may finish just before the next run fires, so the gaps between
    # executions say nothing. Due times are on the period's grid: a run the restart made
    # late is followed by the next due one, which may come less than a period after it
    # (one CI run: gaps 3.2, 0.8, 2.0 s). Two runs fired for one due time would be created
    # together, and more runs than due times would show over the whole span.
    fired = _fired(env)
    gaps = [b - a for a, b in zip(fired, fired[1:], strict=False)]
    due = (fired[-1] - fired[0]) / PERIOD_S + 1 if fired else 0
    assert len(fired) >= 3 and min(gaps) > 0.1, f"runs fired at gaps {gaps}"
    assert len(fired) <= due + 1, f"{len(fired)} runs for about {due:.1f} due times: {gaps}"

    env.cli("app", "stop", APP).check()
    assert "the app is stopped" in env.cli("app", "info", APP).check().stdout
    stopped = len(_ticks(env))  # a run that had already started may still have ticked
    time.sleep(1.5 * PERIOD_S)
    assert len(_ticks(env)) == stopped, "the schedule kept firing after `ketch app stop`"
