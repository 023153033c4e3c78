"""The SDK's own lifecycle: clients per event loop, and an app.run() that fails."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest

import ketch
from ketch import _client
from ketch.exception import NotFoundError

pytestmark = pytest.mark.timeout(120)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_client_closes_with_its_event_loop(control_plane):
    """Regression: a client per ``asyncio.run`` was kept forever, with its loop and sockets."""

    async def one_call() -> None:
        client = await _client._Client.get()
        assert (await client.rpc("Status", {}))["pid"] == os.getpid()

    asyncio.run(
        one_call()
    )  # the first run opens what is shared (the blocking pool, the server's side)
    before, clients = _fds(), set(_client._CLIENTS)  # other tests' long-lived loops
    for _ in range(30):
        asyncio.run(one_call())
    deadline = time.monotonic() + 10
    while _fds() > before + 4 and time.monotonic() < deadline:  # the server closes its ends
        time.sleep(0.1)
    assert _fds() <= before + 4, f"file descriptors went from {before} to {_fds()}"
    assert set(_client._CLIENTS) <= clients


def test_a_thread_that_made_blocking_calls_leaves_nothing_behind(control_plane):
    """Regression: each thread's own event loop (and its client) outlived the thread."""
    d = ketch.Dict.from_name("lifecycle-dict", create_if_missing=True)

    def one_call() -> None:
        d.put("k", 1)
        assert d.get("k") == 1

    def in_a_thread() -> None:
        thread = threading.Thread(target=one_call)
        thread.start()
        thread.join(30)

    in_a_thread()
    before, clients = _fds(), set(_client._CLIENTS)
    for _ in range(20):
        in_a_thread()
    assert _fds() <= before + 4, f"file descriptors went from {before} to {_fds()}"
    assert len(_client._CLIENTS) <= len(clients)


failing = ketch.App("lifecycle-failing")


@failing.function(secrets=[ketch.Secret.from_name("lifecycle-no-such-secret")])
def needs_a_secret() -> int:
    return 1


def test_a_failed_app_run_leaves_the_app_free_to_run_again(control_plane):
    """Regression: after a failed start the next ``app.run()`` said "already running"."""
    for _ in range(2):
        with pytest.raises(NotFoundError, match="lifecycle-no-such-secret"), failing.run():
            pass


bounded = ketch.App("lifecycle-bounded")


@bounded.function(block_network=True, memory=(128, 256))
def wants_bounds() -> int:
    return 1


def test_options_the_runtime_cannot_hold_are_said_when_the_app_starts(control_plane, capsys):
    """The local runtime cannot block the network or limit memory: the user is told, once."""
    with bounded.run(show_logs=False):
        pass
    err = capsys.readouterr().err
    assert "ketch: warning: wants_bounds: block_network=True is not enforced: the local" in err
    assert "ketch: warning: wants_bounds: the memory limit is not enforced: the local" in err


def test_functions_of_a_module_without_a_file_are_serialized(control_plane):
    """A notebook, a REPL or ``python -c`` has no file a container could import."""
    code = (
        "import ketch\n"
        "app = ketch.App('no-file')\n"
        "@app.function()\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "with app.run(show_logs=False):\n"
        "    print('RESULT', double.remote(21))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert "RESULT 42" in done.stdout, done.stderr
