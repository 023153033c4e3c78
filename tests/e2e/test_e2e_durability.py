"""The control plane can be `kill -9`ed mid-work and restarted without losing results."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _kill9_server(env) -> int:
    pid = env.server_pid()
    os.kill(pid, signal.SIGKILL)
    assert env.wait_until(lambda: not env.pid_alive(pid), 10), "server survived SIGKILL?"
    return pid


def _restart_server(env, old_pid: int) -> None:
    # The client may already have started a new one on its own; `start` must then be a no-op.
    proc = env.cli("server", "start", timeout=60)
    info = env.server_info()
    assert info is not None and info["pid"] != old_pid and env.pid_alive(info["pid"]), (
        proc.describe()
    )


@pytest.mark.timeout(300)
def test_kill9_with_spawned_calls_in_deployed_app(fresh_ketch_env):
    env = fresh_ketch_env
    env.cli("deploy", "examples/deployed_app.py", timeout=60).check()
    inputs = [str(i) for i in range(1, 7)]
    spawned = env.python("examples/deployed_client.py", "spawn", *inputs).check()
    ids = dict(re.findall(r"CALL (\d+) (\S+)", spawned.stdout))
    assert set(ids) == set(inputs), spawned.describe()

    old = _kill9_server(env)
    _restart_server(env, old)

    got = env.python("examples/deployed_client.py", "get", *ids.values(), timeout=150).check()
    for x, call_id in ids.items():
        assert f"RESULT {call_id} {int(x) ** 2}" in got.stdout, got.describe()


class _PortSquatter:
    """Another program on ``port``: it accepts connections and hangs up at once."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Connections the killed server left half-closed hold the port for a while.
        deadline = time.monotonic() + 90
        while True:
            try:
                self.sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.mark.timeout(300)
def test_kill9_twice_during_map_and_restart_on_another_port(fresh_ketch_env):
    # A map keeps going through two kill -9s of the control plane. While it is down the
    # first time, something else grabs its port, so the restarted one must listen
    # elsewhere; the client has to follow it there.
    env = fresh_ketch_env
    n = 1500
    env.cli("server", "start", timeout=60).check()
    old_port = int(env.server_info()["url"].rsplit(":", 1)[1])
    run = env.popen("run", "examples/durable_map.py", "--n", n)
    assert run.wait_for_line("FIRST-RESULT", 90), f"map never produced a result\n{run.text()}"
    assert run.proc.poll() is None, f"map finished before the kill; raise n\n{run.text()}"

    old = _kill9_server(env)
    blocker = _PortSquatter(old_port)
    try:
        assert run.proc.poll() is None, f"client gave up when the server died\n{run.text()}"
        _restart_server(env, old)
        assert int(env.server_info()["url"].rsplit(":", 1)[1]) != old_port
        progress = run.text().count("progress")
        assert env.wait_until(lambda: run.text().count("progress") > progress, 60), run.text()
        assert run.proc.poll() is None, f"map finished before the second kill\n{run.text()}"
        _restart_server(env, _kill9_server(env))
        done = run.wait(timeout=180)
    finally:
        blocker.close()
    assert done.returncode == 0 and not done.timed_out, done.describe()
    assert f"SUM={n * (n + 1) // 2} EXPECTED={n * (n + 1) // 2}" in done.stdout, done.describe()
    assert "ORDER-OK" in done.stdout, done.describe()


@pytest.mark.timeout(240)
def test_kill9_with_inputs_in_flight(fresh_ketch_env):
    # The control plane dies while a .remote() call, the inputs of a .map() and a
    # .remote_gen() stream are all running in containers.
    env = fresh_ketch_env
    env.cli("server", "start", timeout=60).check()
    run = env.popen("run", "examples/durable_calls.py::together")
    assert run.wait_for_line("STARTED", 90), run.text()
    time.sleep(0.5)
    assert run.proc.poll() is None, f"finished before the kill\n{run.text()}"
    old = _kill9_server(env)
    time.sleep(0.5)
    _restart_server(env, old)
    done = run.wait(timeout=150)
    assert done.returncode == 0 and not done.timed_out, done.describe()
    assert done.stdout.split()[-3:] == ["OK", "OK", "OK"], done.describe()
