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
from collections.abc import Callable
from typing import Any

import msgpack

import ketch  # noqa: F401 - imported for its warm modules, which every fork inherits
import ketch.guest.loop as container_loop

MAX_MSG = 1 << 20


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(msgpack.packb(msg, use_bin_type=True))


def _child(keep: list[int], req: dict[str, Any], fds: list[int]) -> None:
    """In the forked container: become its own session, take its pipes and environment, run."""
    try:
        for fd in keep:  # the template's socket and wake-up pipe
            os.close(fd)
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


Handler = Callable[[dict[str, Any], list[int], list[int]], dict[str, Any]]


def serve(sock: socket.socket, max_fds: int, handle: Handler) -> None:
    """A template's loop: each request from the worker (with up to ``max_fds``
    descriptors) is ``handle(request, fds, keep)``'s reply (``keep``: the loop's own
    descriptors, which a fork closes); the template's children's exits are reported."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _send(sock, {"t": "ready", "pid": os.getpid()})
    keep = [sock.fileno(), wake_r, wake_w]
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock.fileno() in readable:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, max_fds)
            if not data:
                os._exit(0)  # the worker went away
            _send(sock, handle(msgpack.unpackb(data, raw=False), fds, keep))


def _fork_container(req: dict[str, Any], fds: list[int], keep: list[int]) -> dict[str, Any]:
    pid = os.fork()
    if pid == 0:
        _child(keep, req, fds)
    for fd in fds:
        os.close(fd)
    return {"t": "spawned", "id": req["id"], "pid": pid}


def main() -> None:
    container_loop._die_with_parent()
    serve(socket.socket(fileno=int(os.environ.pop("KETCH_TEMPLATE_FD"))), 2, _fork_container)


if __name__ == "__main__":
    main()
