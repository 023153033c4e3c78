"""Queued inputs past a function's window wait in the store only (issue 17, "queues that
outgrow memory"), proved with a window of 5 inputs so that every path runs: inputs spill
and come back in order, a cancelled call ends its spilled inputs too, and a control plane
killed with inputs spilled recovers them all. (``benchmarks/queue_memory.py`` measures the
memory: flat from 100,000 to 10,000,000 queued inputs.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from ketch_testing import SHOW, ExampleRun

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

APP = SHOW + textwrap.dedent(
    """
    import sys, time
    import ketch
    from ketch.exception import CallCancelledError

    app = ketch.App("queue-window")


    @app.function(max_containers=2)
    def double(x):
        return 2 * x


    @app.function(max_containers=1)
    def slow(x):
        time.sleep(0.05)
        return x


    def cancelled():
        call = slow.spawn_map(range(60))
        time.sleep(0.5)
        call.cancel()
        try:
            call.get(timeout=60)
            return "no error"
        except CallCancelledError:
            return "CallCancelledError"


    if __name__ == "__main__":
        mode = sys.argv[1]
        if mode == "spawn":  # for the kill -9 test: spawn, print the id, keep the app
            with app.run():
                call = slow.spawn_map(range(40))
                print("CALL", call.object_id, flush=True)
                time.sleep(600)
        with app.run():
            show("map", lambda: list(double.map(range(300))) == [2 * x for x in range(300)])
            show("order", lambda: slow.spawn_map(range(30)).get(timeout=120) == list(range(30)))
            show("cancel", cancelled)
            show("after", lambda: double.remote(21))
    """
)


@pytest.fixture
def small_window(fresh_ketch_env):
    fresh_ketch_env.env["KETCH_QUEUE_WINDOW"] = "5"
    return fresh_ketch_env


def test_inputs_past_the_window_spill_come_back_in_order_and_cancel(small_window, tmp_path):
    script = tmp_path / "window_app.py"
    script.write_text(APP)
    run = ExampleRun.parse(small_window.python(script, "main", timeout=240))
    assert run.value("map") is True
    assert run.value("order") is True  # FIFO across the window and the store
    assert run.value("cancel") == "CallCancelledError"  # its spilled inputs end too
    assert run.value("after") == 42  # the pool is not stuck on them


def test_a_killed_control_plane_recovers_spilled_inputs(small_window, tmp_path):
    env = small_window
    script = tmp_path / "window_app.py"
    script.write_text(APP)
    proc = subprocess.Popen(
        [sys.executable, str(script), "spawn"], env=env.env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("CALL "), line
        call_id = line.split()[1]
        pid = env.server_pid()
        os.kill(pid, signal.SIGKILL)
        assert env.wait_until(lambda: not env.pid_alive(pid), 10)
        env.cli("server", "start", timeout=60).check()
        code = (
            f"import ketch; print('GOT', ketch.FunctionCall.from_id({call_id!r}).get(timeout=120))"
        )
        got = env.python("-c", code, timeout=180)
        assert f"GOT {list(range(40))}" in got.stdout, got.describe()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
