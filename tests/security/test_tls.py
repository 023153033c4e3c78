"""Off loopback the API wants TLS (or an explicit --insecure); with TLS the SDK works as before."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ketch_testing import self_signed_cert as _self_signed

pytestmark = pytest.mark.timeout(90)


def test_off_loopback_without_tls_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ketch.server", "--home", str(tmp_path / "h"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "--tls-cert" in done.stderr and "--insecure" in done.stderr, done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_sdk_talks_tls_and_plain_text_is_not_answered(tmp_path):
    cert, key = _self_signed(tmp_path)
    home = Path(tmp_path / "home")
    port = _free_port()
    env = dict(os.environ, KETCH_HOME=str(home), KETCH_RUNTIME="local")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ketch.server",
            "--home",
            str(home),
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (home / "server.json").exists():
            assert server.poll() is None and time.monotonic() < deadline, (
                server.stderr.read() if server.stderr else ""
            )
            time.sleep(0.05)
        client_env = dict(
            env,
            KETCH_SERVER_URL=f"https://127.0.0.1:{port}",
            KETCH_TLS_CA=str(cert),
            KETCH_TOKEN=(home / "token").read_text().strip(),
            KETCH_HOME=str(tmp_path / "elsewhere"),
        )
        code = "import ketch; d = ketch.Dict.from_name('tls', create_if_missing=True); d['k'] = 7; print(d['k'])"
        done = subprocess.run(
            [sys.executable, "-c", code], env=client_env, capture_output=True, text=True, timeout=60
        )
        assert done.stdout.strip() == "7", done.stderr
        # Plain HTTP on the TLS port gets no API answer.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /rpc/Status HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n\x80")
            sock.settimeout(5)
            try:
                answer = sock.recv(4096)
            except (ConnectionError, TimeoutError):
                answer = b""
        assert b"version" not in answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
        if server.stderr:
            server.stderr.close()
