"""The fork template's checks (``ketch.guest.zygote``): what a memory snapshot refuses,
and the go-ahead's framing."""

from __future__ import annotations

import json
import os
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
    assert zygote.fork_hazards(_already_open(), threading.enumerate()) == ""


def test_a_started_thread_is_named():
    before = threading.enumerate()  # the test runner's own
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="poller", daemon=True)
    t.start()
    try:
        problem = zygote.fork_hazards(_already_open(), before)
    finally:
        stop.set()
        t.join()
    assert "threads were started (poller)" in problem
    assert "@enter(snap=False)" in problem


def test_an_open_socket_is_refused_but_the_templates_own_are_not():
    before = _already_open()
    a, b = socket.socketpair()
    try:
        threads = threading.enumerate()
        problem = zygote.fork_hazards(before, threads)
        assert "2 network connection(s) or socket(s) are open" in problem
        assert zygote.fork_hazards([*before, a.fileno(), b.fileno()], threads) == ""
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
    from ketch.server.nodes import parse_meminfo
    from ketch.worker.forks import memory_pressure

    plenty = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   12000000 kB\n"
    short = "MemTotal:       24000000 kB\nMemAvailable:    1000000 kB\n"
    assert memory_pressure(*parse_meminfo(plenty)) == ""
    assert memory_pressure(*parse_meminfo(short)) == "976 of 23437 MiB available"
    assert memory_pressure(*parse_meminfo("")) == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="binds into another mount namespace: root only")
def test_device_nodes_are_bound_into_a_forks_own_mount_namespace():
    """What the worker does for a fork's GPUs (``ketch.worker.devices``), tried with
    ``/dev/zero``: a process in a user and mount namespace of its own, with a fresh
    ``/dev`` where ``zero`` is an empty file, reads the host's node there afterwards."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("no unshare(1)")
    script = "mount -t tmpfs t /dev && : > /dev/zero && echo ready && read go && head -c 4 /dev/zero | od -An -tx1"
    child = subprocess.Popen(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        # The shell is the unshare(1)'s child or unshare itself (it execs): the mount
        # namespace is the same either way.
        done = subprocess.run(
            [sys.executable, "-m", "ketch.worker.devices", str(child.pid), "/dev/zero"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 0, done.stderr
        out, _ = child.communicate("go\n", timeout=20)
        assert out.split() == ["00", "00", "00", "00"], out
    finally:
        child.kill()
        child.wait()
