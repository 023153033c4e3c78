"""Schedules through the real CLI: firing repeatedly, overlap, restarts, stopping with the app."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

APP = "schedules-demo"
TICKS = "import ketch\nprint('TICKS', sorted(ketch.Dict.from_name('schedules-demo-ticks', create_if_missing=True).values()))\n"


def _ticks(env) -> list[float]:
    out = env.python("-c", TICKS).check().stdout
    return [float(x) for x in re.findall(r"[\d.]+", out.split("TICKS", 1)[1])]


def test_period_fires_repeatedly_survives_restarts_once_and_stops_with_the_app(fresh_ketch_env):
    env = fresh_ketch_env
    env.cli("deploy", "examples/schedules.py", timeout=60).check()
    assert env.wait_until(lambda: len(_ticks(env)) >= 3, timeout=30), (
        "the 2 s schedule did not fire 3 times"
    )
    info = env.cli("app", "info", APP).check().stdout
    assert "schedule heartbeat: Period(seconds=2)" in info, info
    assert re.search(r"next run: \S+ \S+ \(in \d+s\)", info), info
    assert re.search(r"last run: fc-\S+ .*(success|running)", info), info
    assert "Cron('0 3 * * *', timezone='Europe/Paris')" in info, info
    assert re.search(
        r"schedules-demo\s+running\s+deployed.*\(in \d+s\)", env.cli("app", "list").check().stdout
    )

    # A restart, then a kill -9 and a restart: runs go on, and never twice for one due time.
    env.cli("server", "stop", timeout=60).check()
    before = len(_ticks(env))  # starts the control plane again
    assert env.wait_until(lambda: len(_ticks(env)) >= before + 2, timeout=30)
    import os
    import signal

    os.kill(env.server_pid(), signal.SIGKILL)
    time.sleep(1)
    before = len(_ticks(env))
    assert env.wait_until(lambda: len(_ticks(env)) >= before + 2, timeout=30)
    ticks = _ticks(env)
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    # Ticks are when runs executed, not when they were due: the first run after a restart
    # waits for a cold container, so the gap to the next (warm) run can shrink well below
    # the 2 s period (0.76 s seen on a 2-core machine). Runs never overlap (a run due while
    # one is going is skipped), so two runs fired for one due time execute back to back:
    # a gap of a few milliseconds.
    assert min(gaps) > 0.3, f"two runs fired for one due time: gaps {gaps}"

    env.cli("app", "stop", APP).check()
    time.sleep(1)
    stopped = len(_ticks(env))
    time.sleep(5)
    assert len(_ticks(env)) == stopped, "the schedule kept firing after `ketch app stop`"
    assert "the app is stopped" in env.cli("app", "info", APP).check().stdout


OVERLAP = """
import time
import ketch

app = ketch.App("overlap-demo")


@app.function(schedule=ketch.Period(seconds=1))
def slow():
    time.sleep(3.5)
"""


def test_a_run_due_while_the_last_still_runs_is_skipped(ketch_env, workdir):
    path = Path(workdir) / "overlap_app.py"
    path.write_text(OVERLAP)
    ketch_env.cli("deploy", str(path), timeout=60).check()
    try:

        def skipped() -> bool:
            logs = ketch_env.cli(
                "app", "logs", "overlap-demo", timeout=20, allow_timeout=True
            ).output
            return "skipped a scheduled run of slow: the previous run (fc-" in logs

        assert ketch_env.wait_until(skipped, timeout=30)
        record = ketch_env.app_record("overlap-demo")
        assert record["n_containers"] == 1, record  # skipped, not piled up in new containers
    finally:
        ketch_env.cli("app", "stop", "overlap-demo").check()


BAD = {
    "ketch.Cron('not a cron')": "5 fields",
    "ketch.Cron('61 * * * *')": "not a valid cron expression",
    "ketch.Cron('* * * * *', timezone='Mars/Olympus')": "unknown timezone",
    "ketch.Period(seconds=0)": "at least 1 second",
    "'daily'": "ketch.Cron(...) or ketch.Period(...)",
}


@pytest.mark.parametrize("schedule", sorted(BAD))
def test_bad_schedules_are_clear_errors(ketch_env, schedule):
    code = (
        "import ketch\n"
        "app = ketch.App('bad-schedule')\n"
        "try:\n"
        f"    @app.function(schedule={schedule})\n"
        "    def f(): pass\n"
        "except ketch.exception.InvalidError as exc:\n"
        "    print('INVALID', exc)\n"
    )
    proc = ketch_env.python("-c", code).check()
    assert "INVALID" in proc.stdout and BAD[schedule] in proc.stdout, proc.describe()


def test_a_scheduled_function_must_take_no_arguments(ketch_env):
    code = (
        "import ketch\n"
        "app = ketch.App('bad-schedule')\n"
        "try:\n"
        "    @app.function(schedule=ketch.Period(hours=1))\n"
        "    def f(x): pass\n"
        "except ketch.exception.InvalidError as exc:\n"
        "    print('INVALID', exc)\n"
    )
    assert "must take no required arguments" in ketch_env.python("-c", code).check().stdout
