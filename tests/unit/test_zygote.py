"""The fork template's checks (``ketch.guest.zygote``): what a memory snapshot refuses,
and the go-ahead's framing."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from ketch.guest import zygote

pytestmark = pytest.mark.timeout(30)


def _already_open() -> list[int]:
    """The sockets this test process has of its own (a test runner's), kept out of the check."""
    import os

    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.append(int(name))
        except OSError:
            pass
    return found


def test_a_clean_process_can_be_snapshot():
    assert zygote.fork_hazards(_already_open()) == ""


def test_a_started_thread_is_named():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="poller", daemon=True)
    t.start()
    try:
        problem = zygote.fork_hazards(_already_open())
    finally:
        stop.set()
        t.join()
    assert "threads were started (poller)" in problem
    assert "@enter(snap=False)" in problem


def test_an_open_socket_is_refused_but_the_templates_own_are_not():
    before = _already_open()
    a, b = socket.socketpair()
    try:
        assert "2 network connection(s) or socket(s) are open" in zygote.fork_hazards(before)
        assert zygote.fork_hazards([*before, a.fileno(), b.fileno()]) == ""
    finally:
        a.close()
        b.close()


def test_the_go_ahead_is_read_whole_and_anything_else_gives_up():
    ours, theirs = socket.socketpair()
    body = json.dumps({"env": {"A": "x" * 200_000}, "hostname": "ketch-1"}).encode()
    with ours, theirs:
        ours.sendall(b"g" + len(body).to_bytes(4, "big") + body)
        got = zygote._read_go(theirs)
    assert got is not None and got["hostname"] == "ketch-1" and len(got["env"]["A"]) == 200_000
    ours, theirs = socket.socketpair()
    with theirs:
        ours.close()
        assert zygote._read_go(theirs) is None
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(b"x0000{}")
        assert zygote._read_go(theirs) is None


def test_mount_points_with_spaces_are_unescaped():
    assert zygote._unescape(r"/root/my\040app.py") == "/root/my app.py"


def test_templates_go_when_the_machine_is_short_of_memory():
    from ketch.worker.forks import memory_pressure

    plenty = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   12000000 kB\n"
    short = "MemTotal:       24000000 kB\nMemAvailable:    1000000 kB\n"
    assert memory_pressure(plenty) == ""
    assert memory_pressure(short) == "976 of 23437 MiB available"
    assert memory_pressure("") == ""
