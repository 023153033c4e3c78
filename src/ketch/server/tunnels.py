"""Tunnels: a port of a container, reachable at a port of the control plane's host.

``Sandbox.create(encrypted_ports=[8000])`` and ``ketch.forward(8000)`` inside a
function open one. The control plane listens on a free port of its web host
(127.0.0.1 by default); each connection made to it is relayed through the
container's channel socket (:mod:`ketch.guest.tunnel`) to the port inside, so
it works the same for containers with their own network namespace
(``block_network``), the sandbox runtime and ``local``.

Decisions (docs/architecture.md, "Tunnels"):

* A tunnel is as open as Modal's: whoever can connect to the port can use it
  (on 127.0.0.1 that is any local user), as with a Modal tunnel's public URL.
  Put the service's own authentication in front of anything private.
* There is no TLS on loopback: ``url`` is ``http://host:port``, and
  ``encrypted_ports`` and ``unencrypted_ports`` give the same plain TCP port.
* At most ``MAX_PORTS`` tunnels per container and ``MAX_CONNECTIONS`` open
  connections per tunnel (more are refused at once); a connection the
  container does not pick up in ``ATTACH_TIMEOUT_S`` is closed.
* A tunnel closes when its container exits (or ``forward``'s block ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..exception import InvalidError, ResourceUnavailableError
from .rpc import rpc

if TYPE_CHECKING:
    from .api import Api
    from .auth import Caller

logger = logging.getLogger(__name__)

MAX_PORTS = 16
MAX_CONNECTIONS = 256
ATTACH_TIMEOUT_S = 10.0
CHUNK = 64 * 1024

Send = Callable[[dict[str, Any]], object]


@dataclass
class _Tunnel:
    container_id: str
    port: int  # inside the container
    server: asyncio.Server
    host: str
    public_port: int
    send: Send
    open_connections: set[asyncio.Task[None]] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        return {"port": self.port, "host": self.host, "public_port": self.public_port}


class Tunnels:
    """Every open tunnel, by container and port; and connections waiting for their container."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.by_container: dict[str, dict[int, _Tunnel]] = {}
        self._waiting: dict[
            str, asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        ] = {}

    async def open(self, container_id: str, port: int, send: Send) -> dict[str, Any]:
        """A tunnel to ``port`` of the container (the open one, if there is one)."""
        if not 1 <= int(port) <= 65535:
            raise InvalidError(f"port must be between 1 and 65535, not {port}")
        mine = self.by_container.setdefault(container_id, {})
        if port in mine:
            return mine[port].describe()
        if len(mine) >= MAX_PORTS:
            raise ResourceUnavailableError(f"a container may open at most {MAX_PORTS} tunnels")
        holder: list[_Tunnel] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(holder[0], reader, writer)

        server = await asyncio.start_server(accept, self.host, 0)
        tunnel = _Tunnel(
            container_id, port, server, self.host, server.sockets[0].getsockname()[1], send
        )
        holder.append(tunnel)
        mine[port] = tunnel
        logger.info("tunnel %s:%d -> %s port %d", self.host, tunnel.public_port, container_id, port)
        return tunnel.describe()

    def of(self, container_id: str) -> list[dict[str, Any]]:
        return [t.describe() for t in self.by_container.get(container_id, {}).values()]

    def active(self, container_id: str) -> bool:
        """Whether a connection through one of the container's tunnels is open."""
        return any(t.open_connections for t in self.by_container.get(container_id, {}).values())

    async def close(self, container_id: str, port: int | None = None) -> None:
        """Close one tunnel of the container (``port``), or all of them."""
        mine = self.by_container.get(container_id, {})
        for tunnel in [t for p, t in mine.items() if port in (None, p)]:
            mine.pop(tunnel.port, None)
            tunnel.server.close()
            for task in list(tunnel.open_connections):
                task.cancel()
        if not mine:
            self.by_container.pop(container_id, None)

    async def _relay(
        self, tunnel: _Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(tunnel.open_connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        tunnel.open_connections.add(task)
        conn_id = secrets.token_urlsafe(18)  # the container's proof, on its side of the relay
        waiting = asyncio.get_running_loop().create_future()
        self._waiting[conn_id] = waiting
        try:
            tunnel.send({"t": "tunnel", "id": conn_id, "port": tunnel.port})
            inner_reader, inner_writer = await asyncio.wait_for(waiting, ATTACH_TIMEOUT_S)
            try:
                await asyncio.gather(_copy(reader, inner_writer), _copy(inner_reader, writer))
            finally:
                inner_writer.close()
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._waiting.pop(conn_id, None)
            tunnel.open_connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def attach(
        self, hello: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> asyncio.Future[Any] | None:
        """The container's side of a connection arrived (a ``tunnel`` hello on the channel
        socket); returns what to await until the relay is over, or None for a refusal."""
        waiting = self._waiting.pop(str(hello.get("id")), None)
        if waiting is None or waiting.done() or hello.get("error"):
            if waiting is not None and not waiting.done():
                logger.info("tunnel connection refused in the container: %s", hello.get("error"))
                waiting.cancel()
            return None
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting.set_result((reader, _Closing(writer, done)))  # type: ignore[arg-type]
        return done

    async def close_all(self) -> None:
        for container_id in list(self.by_container):
            await self.close(container_id)


class _Closing:
    """The container side's writer: closing it also ends the channel handler that owns it."""

    def __init__(self, writer: asyncio.StreamWriter, done: asyncio.Future[Any]) -> None:
        self._writer, self._done = writer, done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def close(self) -> None:
        self._writer.close()
        if not self._done.done():
            self._done.set_result(None)


async def _copy(reader: asyncio.StreamReader, writer: Any) -> None:
    """``reader`` to ``writer`` until it ends; then ``writer`` is told no more comes."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


# -- RPCs (``ketch.forward`` inside a function's container) ---------------------


def _container_of(caller: Caller) -> str:
    if caller.role != "container" or not caller.container_id:
        raise InvalidError("ketch.forward() works inside a ketch container (a function's)")
    return caller.container_id


@rpc
async def TunnelOpen(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    container_id = _container_of(caller)
    send = functools.partial(api.d._send, container_id)
    return await api.d.tunnels.open(container_id, int(body["port"]), send)


@rpc
async def TunnelClose(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    await api.d.tunnels.close(_container_of(caller), int(body["port"]))
    return {}
