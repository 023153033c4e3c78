"""Spawned calls and FunctionCall: get, timeouts, cancel, from_id, gather."""

from __future__ import annotations

import shutil
import tempfile

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def spawn_run(ketch_env):
    workdir = tempfile.mkdtemp(prefix="ketch-e2e-spawn-", dir="/tmp")
    try:
        run = ketch_env.run_example("spawn_calls.py", "--workdir", workdir, timeout=100)
        run.proc.check()
        yield run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_object_id(spawn_run):
    object_id = spawn_run.value("object_id")
    assert isinstance(object_id, str) and object_id


def test_spawn_then_get(spawn_run):
    assert spawn_run.value("spawn_get") == 49


def test_from_id(spawn_run):
    assert spawn_run.value("from_id_get") == 49


def test_gather(spawn_run):
    assert spawn_run.value("gather") == [0, 1, 4, 9, 16]


def test_spawn_with_kwargs(spawn_run):
    assert spawn_run.value("spawn_kwargs") == 9


def test_get_timeout_raises_timeout_error_and_the_call_goes_on(spawn_run):
    value = spawn_run.value("get_timeout")
    # The call could only end once the caller, after get(timeout=0.5) gave up, let it.
    assert "raised" in value, f"get(timeout=0.5) on a call waiting for its caller returned {value}"
    assert value["is_timeout"], value
    assert value["then"] == "released", value


def test_cancel(spawn_run):
    value = spawn_run.value("cancel")
    assert "raised" in value, f"get() after cancel() returned {value}"
    # get(timeout=30) on a 100 s call: a TimeoutError would mean the cancel did nothing.
    assert not value["is_timeout"], f"get() after cancel() waited for the call: {value}"
    assert (
        value["raised"] in ("InputCancellation", "CallCancelledError") or value["is_ketch_error"]
    ), value


def test_cancel_stops_the_running_input(spawn_run):
    value = spawn_run.value("cancel_stops_work")
    # The input ticks four times a second; once cancelled it must stop ticking.
    assert value["a_second_later"] == value["at_cancel"], value


def test_cancel_raises_input_cancellation_in_the_container(spawn_run):
    value = spawn_run.value("cancel_stops_work")
    assert value["saw_input_cancellation"], value


def test_unknown_call_id(spawn_run):
    value = spawn_run.value("unknown_id")
    assert value.get("raised") == "NotFoundError", value


STATS_APP = """
import time
import ketch

app = ketch.App("current-stats")


@app.function(max_containers=1)
def slow(i):
    time.sleep(30)


@app.local_entrypoint()
def main():
    calls = [slow.spawn(i) for i in range(5)]
    deadline = time.monotonic() + 60
    while True:
        stats = slow.get_current_stats()
        if stats.num_total_runners == 1 and stats.backlog == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print("STATS", stats.backlog, stats.num_total_runners)
    for call in calls:
        call.cancel()
"""


def test_get_current_stats_counts_the_backlog_and_the_runners(ketch_env, tmp_path):
    """``Function.get_current_stats()`` (Modal's): five spawned calls behind one container."""
    (tmp_path / "stats.py").write_text(STATS_APP)
    done = ketch_env.cli("run", "stats.py", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.describe()
    assert "STATS 4 1" in done.stdout, done.describe()
