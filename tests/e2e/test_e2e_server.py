"""`ketch server start|status|stop` and that stopping leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_server_lifecycle(fresh_ketch_env):
    # `ketch run` starts the control plane on demand and leaves it up; `start` is then a
    # no-op, `stop` ends it, and a deployed app is still there once it starts again.
    env = fresh_ketch_env

    status = env.cli("server", "status", timeout=30)
    assert status.returncode != 0 or "not running" in status.output.lower(), status.describe()
    assert env.server_info() is None

    proc = env.cli("run", "examples/hello_world.py", timeout=90).check()
    assert "remote: 16" in proc.stdout, proc.describe()
    info = env.server_info()
    assert info is not None, "no server.json after `ketch run`"
    assert env.pid_alive(info["pid"]), "server did not stay up after `ketch run`"
    assert info["url"].startswith("http://127.0.0.1:"), info
    assert env.rpc("Status")["pid"] == info["pid"]

    status = env.cli("server", "status", timeout=30).check()
    assert info["url"] in status.output or str(info["pid"]) in status.output, status.describe()

    again = env.cli("server", "start", timeout=60)
    assert again.returncode == 0, again.describe()
    assert env.server_info()["pid"] == info["pid"], "a second `start` replaced the running server"

    env.cli("deploy", "examples/deployed_app.py", timeout=60).check()
    env.cli("server", "stop", timeout=30).check()
    assert env.wait_until(lambda: not env.pid_alive(info["pid"]), 10), (
        "server still alive after stop"
    )
    assert not (env.home / "server.json").exists(), "server.json left behind after stop"

    env.cli("server", "start", timeout=60).check()
    proc = env.python("examples/deployed_client.py", "call", "4", timeout=60).check()
    assert "SQUARE 4 = 16" in proc.stdout, proc.describe()


@pytest.mark.timeout(120)
def test_ctrl_c_stops_run_and_its_containers(fresh_ketch_env):
    env = fresh_ketch_env
    run = env.popen("run", "examples/durable_map.py", "--n", "100000")
    assert run.wait_for_line("FIRST-RESULT", 60), run.text()
    record = env.app_record("durable-map")
    assert record and record["state"] == "running", record

    os.killpg(run.proc.pid, signal.SIGINT)
    done = run.wait(timeout=20)
    assert not done.timed_out, f"`ketch run` ignored Ctrl-C\n{done.describe()}"
    assert done.returncode != 0, done.describe()

    def stopped():
        rec = env.app_record("durable-map")
        return rec["state"] != "running" and rec["n_containers"] == 0

    assert env.wait_until(stopped, 15), f"app after Ctrl-C: {env.app_record('durable-map')}"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_ephemeral_app_stopped_when_client_dies(fresh_ketch_env):
    # A `ketch run` killed with SIGKILL cannot stop its app; the control plane
    # must notice the missing heartbeats and stop it (and its containers) itself.
    env = fresh_ketch_env
    # The server tells clients to beat every timeout/4 s: a live client misses 4 beats first.
    env.env["KETCH_EPHEMERAL_APP_TIMEOUT"] = "4"
    run = env.popen("run", "examples/durable_map.py", "--n", "100000")
    assert run.wait_for_line("FIRST-RESULT", 60), run.text()
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.wait(timeout=10)

    def stopped():
        rec = env.app_record("durable-map")
        return rec["state"] != "running" and rec["n_containers"] == 0

    assert env.wait_until(stopped, 150, interval=2), env.app_record("durable-map")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_server_stop_leaves_no_container_behind_even_after_a_kill9(fresh_ketch_env):
    env = fresh_ketch_env
    env.cli("deploy", "examples/scaling.py", timeout=60).check()
    code = "import ketch\nprint('PID', ketch.Function.from_name('scaling-demo', 'warm').remote())\n"
    proc = env.python("-c", code).check()
    old_container = int(re.search(r"PID (\d+)", proc.stdout).group(1))

    old_server = env.server_pid()
    os.kill(old_server, signal.SIGKILL)
    assert env.wait_until(lambda: not env.pid_alive(old_server), 10)
    env.cli("server", "start", timeout=60).check()

    # The restarted control plane keeps serving the app...
    proc = env.python("-c", code, timeout=60).check()
    assert "PID" in proc.stdout, proc.describe()
    # ...and once it stops, nothing from either generation is left running.
    env.cli("server", "stop", timeout=30).check()
    assert env.wait_until(lambda: not env.pid_alive(old_container), 15), (
        f"container {old_container} from before the kill -9 is still running"
    )
    assert env.wait_until(lambda: not env.leftover_pids(), 15), (
        f"processes left after `ketch server stop`: {sorted(env.leftover_pids())}"
    )


@pytest.mark.timeout(120)
def test_stop_during_start_leaves_no_server(fresh_ketch_env):
    # `ketch server stop` issued while another command is still starting the
    # control plane must not report "not running" and leave that server behind.
    env = fresh_ketch_env
    starting = env.popen("server", "start")
    time.sleep(0.3)  # the start is under way but has not written server.json yet
    stopped = env.cli("server", "stop", timeout=60)
    started = starting.wait(timeout=60)
    assert not started.timed_out, started.describe()

    def no_server():
        info = env.server_info()
        return info is None or not env.pid_alive(info["pid"])

    assert env.wait_until(no_server, 10), (
        f"server {env.server_info()} still running after `ketch server stop`\n"
        f"{stopped.describe()}\n{started.describe()}"
    )


@pytest.mark.timeout(60)
def test_a_ray_address_where_nothing_answers_is_said_at_once(fresh_ketch_env):
    """``--ray`` at an address with no cluster: the start fails in seconds and says why
    (Ray itself would retry for minutes)."""
    done = fresh_ketch_env.cli(
        "server", "start", "--ray", "127.0.0.1:1", extra_env={"KETCH_RUNTIME": "sandbox"}
    )
    assert done.returncode != 0 and done.elapsed < 30, done.describe()
    said = done.stdout + done.stderr
    assert any(
        reason in said
        for reason in (
            "no Ray cluster answers at 127.0.0.1:1",
            "pip install 'ketch[ray]'",  # no Ray installed
            "the sandbox runtime cannot run here",  # a machine without bubblewrap
        )
    ), done.describe()
    assert fresh_ketch_env.server_info() is None
    # ... and leaves no socket directory behind (ketch.worker.bubblewrap.socket_dir's name).
    import hashlib
    import tempfile
    from pathlib import Path

    tag = hashlib.sha256(str(fresh_ketch_env.home.resolve()).encode()).hexdigest()[:12]
    assert not list(Path(tempfile.gettempdir()).glob(f"ketch-*-{tag}"))
    from ketch.worker import userns  # nor its user namespace's mounts under /run/ketch

    assert not userns.run_dir(fresh_ketch_env.home).exists()
