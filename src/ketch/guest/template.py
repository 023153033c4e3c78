"""A warm template process that forks containers (the ``local`` runtime's cold-start path).

The worker starts one template per node. It imports ketch and the container
runtime once, then waits on a SOCK_SEQPACKET socket for spawn requests that
carry the new container's environment and its stdout/stderr pipes. Each
container is a fork of the template: it skips interpreter start-up and those
imports. The template reaps its children and reports their exit status.

Forking is safe here because the template never starts a thread.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from typing import Any

import msgpack

import ketch  # noqa: F401 - imported for its warm modules, which every fork inherits
import ketch.guest.loop as container_loop

MAX_MSG = 1 << 20


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(msgpack.packb(msg, use_bin_type=True))


def _child(
    sock: socket.socket, wake_r: int, wake_w: int, req: dict[str, Any], fds: list[int]
) -> None:
    """In the forked container: become its own session, take its pipes and environment, run."""
    try:
        sock.close()
        os.close(wake_r)
        os.close(wake_w)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        os.environ.update(req["env"])
        os.environ["KETCH_PARENT_PID"] = str(os.getppid())
        if req.get("cwd") and os.path.isdir(req["cwd"]):
            os.chdir(req["cwd"])
        container_loop.main()
    except BaseException:  # a fork must never return into the template's loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(1)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"t": "exited", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


def main() -> None:
    container_loop._die_with_parent()
    sock = socket.socket(fileno=int(os.environ.pop("KETCH_TEMPLATE_FD")))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _send(sock, {"t": "ready", "pid": os.getpid()})
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock.fileno() in readable:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, 2)
            if not data:
                os._exit(0)  # the worker went away
            req = msgpack.unpackb(data, raw=False)
            pid = os.fork()
            if pid == 0:
                _child(sock, wake_r, wake_w, req, fds)
            for fd in fds:
                os.close(fd)
            _send(sock, {"t": "spawned", "id": req["id"], "pid": pid})


if __name__ == "__main__":
    main()
