"""The container's end of a tunnel: one connection to a port inside the container.

For each connection a client makes to a tunnel's port on the control plane's
host, the control plane sends ``{"t": "tunnel", "id", "port"}`` on the
container channel. :func:`open_connection` (on a thread of its own) connects
to that port inside the container, opens a second connection to the channel
socket, says ``{"t": "tunnel", "id"}`` on it, and from then on copies bytes
both ways until both sides are done. It runs inside the container's network
namespace, so a ``block_network`` container's ports are reached as well.

Example::

    threading.Thread(target=open_connection, args=(msg, _connect), daemon=True).start()
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from .._wire import BlockingChannel

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 5.0


def _dial(port: int) -> socket.socket:
    """A connection to ``port`` on the container's loopback (IPv4, then IPv6)."""
    error: OSError | None = None
    for host in ("127.0.0.1", "::1"):
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """``src`` to ``dst`` until ``src`` ends; then ``dst`` is told no more comes."""
    try:
        while chunk := src.recv(CHUNK):
            dst.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def open_connection(msg: dict[str, Any], connect: Callable[[], BlockingChannel]) -> None:
    """Serve one tunnelled connection (see the module's docstring)."""
    conn_id = str(msg.get("id"))
    try:
        inner: socket.socket | None = _dial(int(msg.get("port") or 0))
        hello: dict[str, Any] = {"t": "tunnel", "id": conn_id}
    except (OSError, ValueError) as exc:
        inner = None
        hello = {"t": "tunnel", "id": conn_id, "error": f"port {msg.get('port')}: {exc}"}
    try:
        chan = connect()
        chan.write(hello)
    except Exception:
        if inner is not None:
            inner.close()
        return
    outer = chan.sock
    if inner is None:
        outer.close()
        return
    back = threading.Thread(target=_copy, args=(outer, inner), daemon=True)
    back.start()
    _copy(inner, outer)
    back.join()
    inner.close()
    outer.close()
