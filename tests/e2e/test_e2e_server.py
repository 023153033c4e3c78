"""`ketch server start|status|stop` and that stopping leaves no process behind."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_server_lifecycle(fresh_ketch_env):
    env = fresh_ketch_env

    status = env.cli("server", "status", timeout=30)
    assert status.returncode != 0 or "not running" in status.output.lower(), status.describe()
    assert env.server_info() is None

    env.cli("server", "start", timeout=60).check()
    info = env.server_info()
    assert info is not None, "no server.json after `ketch server start`"
    assert info["url"].startswith("http://127.0.0.1:"), info
    assert env.pid_alive(info["pid"])
    assert env.rpc("Status")["pid"] == info["pid"]

    status = env.cli("server", "status", timeout=30).check()
    assert info["url"] in status.output or str(info["pid"]) in status.output, status.describe()

    again = env.cli("server", "start", timeout=60)
    assert again.returncode == 0, again.describe()
    assert env.server_info()["pid"] == info["pid"], "a second `start` replaced the running server"

    env.cli("server", "stop", timeout=30).check()
    assert env.wait_until(lambda: not env.pid_alive(info["pid"]), 10), (
        "server still alive after stop"
    )
    assert not (env.home / "server.json").exists(), "server.json left behind after stop"


def test_run_starts_server_on_demand(fresh_ketch_env):
    env = fresh_ketch_env
    assert env.server_info() is None
    proc = env.cli("run", "examples/hello_world.py", timeout=90).check()
    assert "remote: 16" in proc.stdout, proc.describe()
    info = env.server_info()
    assert info is not None and env.pid_alive(info["pid"]), (
        "server did not stay up after `ketch run`"
    )


@pytest.mark.timeout(180)
def test_server_stop_leaves_no_container_behind(fresh_ketch_env):
    env = fresh_ketch_env
    env.cli("deploy", "examples/scaling.py", timeout=60).check()
    code = "import ketch\nprint('PID', ketch.Function.from_name('scaling-demo', 'warm').remote())\n"
    proc = env.python("-c", code).check()
    container_pid = int(re.search(r"PID (\d+)", proc.stdout).group(1))
    server_pid = env.server_pid()

    env.cli("server", "stop", timeout=30).check()
    assert env.wait_until(lambda: not env.pid_alive(server_pid), 10)
    assert env.wait_until(lambda: not env.pid_alive(container_pid), 15), (
        "container outlived the server"
    )
    leftovers = env.leftover_pids()
    assert not leftovers, f"processes left after `ketch server stop`: {sorted(leftovers)}"


@pytest.mark.timeout(180)
def test_deployed_app_survives_server_restart(fresh_ketch_env):
    env = fresh_ketch_env
    env.cli("deploy", "examples/deployed_app.py", timeout=60).check()
    env.cli("server", "stop", timeout=30).check()
    env.cli("server", "start", timeout=60).check()
    proc = env.python("examples/deployed_client.py", "call", "4", timeout=60).check()
    assert "SQUARE 4 = 16" in proc.stdout, proc.describe()
