"""Usage and cost: a call's share at the rate card, per-container rows, budgets."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.e2e

APP = """
import time

import ketch

app = ketch.App("usage-metered")


@app.function(cpu=1.0, memory=1024, scaledown_window=2)
def hold(seconds: float) -> str:
    time.sleep(seconds)
    return "held"


@app.local_entrypoint()
def main():
    call = hold.spawn(2.0)
    print("RESULT", call.get(), call.object_id)
"""

BUDGETED = """
import ketch

app = ketch.App("usage-budgeted")


@app.function()
def work() -> int:
    return 1
"""


def test_a_call_costs_its_seconds_at_the_rate_card(ketch_env, tmp_path):
    """A call that held a 1-CPU, 1-GiB container for 2.0 s costs 2.0 s x (CPU + 1 GiB
    rates), within 100 ms; the container's own row covers at least that time."""
    (tmp_path / "metered.py").write_text(APP)
    run = ketch_env.cli("run", "metered.py", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.describe()
    call_id = re.search(r"RESULT held (fc-\S+)", run.stdout).group(1)
    shown = ketch_env.cli("usage", "--call", call_id, "--json").check()
    reply = json.loads(shown.stdout)
    call, rates = reply["call"], reply["rates"]
    assert abs(call["seconds"] - 2.0) <= 0.1, call
    per_second = rates["cpu_core"] * 1.0 + rates["memory_gib"] * 1.0
    assert abs(call["cost"] - call["seconds"] * per_second) < 1e-9, (call, rates)
    rows = json.loads(
        ketch_env.cli("usage", "--app", "usage-metered", "--by", "container", "--json")
        .check()
        .stdout
    )["rows"]
    assert len(rows) == 1 and rows[0]["tag"] == "hold", rows
    row = rows[0]
    assert row["seconds"] >= 2.0 and abs(row["seconds"] * 10 - round(row["seconds"] * 10)) < 1e-6
    assert row["cpu_s"] >= row["seconds"] * 1.0 - 1e-6 and row["mem_gib_s"] >= row["seconds"]
    assert row["cost"] >= row["seconds"] * per_second - 1e-9
    table = ketch_env.cli("usage", "--by", "function").check().stdout
    assert "usage-metered" in table and "hold" in table and "total $" in table, table
    info = ketch_env.cli("app", "info", "usage-metered").check().stdout
    assert "cost today (UTC): $" in info, info


def test_an_app_over_its_budget_starts_no_containers(ketch_env, tmp_path):
    """``ketch app budget NAME 0``: the next call that needs a container fails with
    ``BudgetExceededError`` saying why; ``--clear`` lets it run again."""
    (tmp_path / "budgeted.py").write_text(BUDGETED)
    ketch_env.cli("deploy", "budgeted.py", cwd=tmp_path).check()
    ketch_env.cli("app", "budget", "usage-budgeted", "0/day").check()
    call = (
        "import ketch\n"
        "f = ketch.Function.from_name('usage-budgeted', 'work')\n"
        "try:\n"
        "    print('RAN', f.remote())\n"
        "except ketch.exception.BudgetExceededError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    refused = ketch_env.python("-c", call, timeout=60)
    assert "REFUSED app 'usage-budgeted' is over its budget of $0.00/day" in refused.stdout, (
        refused.describe()
    )
    info = ketch_env.cli("app", "info", "usage-budgeted").check().stdout
    assert "of a $0.00/day budget" in info, info
    ketch_env.cli("app", "budget", "usage-budgeted", "--clear").check()
    ran = ketch_env.python("-c", call, timeout=60)
    assert "RAN 1" in ran.stdout, ran.describe()
    bad = ketch_env.cli("app", "budget", "usage-budgeted", "lots")
    assert bad.returncode != 0 and "dollars a day" in bad.output, bad.describe()
    ketch_env.cli("app", "stop", "usage-budgeted").check()
