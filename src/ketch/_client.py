"""The client side of the HTTP API.

One ``_Client`` per event loop. Requests that fail because the control plane
is unreachable are retried (re-reading where it lives, and restarting the
embedded one) for up to ``connect_timeout`` seconds; every mutating request
is idempotent, so a retry after a crash of the control plane is safe.

The server URL is ``http://host:port`` or, inside sandbox containers,
``unix:/path/to/api.sock`` (a socket bound into the container, which also
works with ``block_network=True``). RPCs go over a small pool of kept-alive
HTTP/1.1 connections of this module's own (aiohttp's client costs more CPU per
request than a Dict get costs the control plane); blob transfers use aiohttp,
which containers import only when they first move a blob.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from . import _server_manager
from ._config import config
from ._serialization import pack, unpack
from .exception import ConnectionFailedError, from_wire

if TYPE_CHECKING or not os.environ.get("KETCH_CONTAINER_ID"):
    # Clients pay for aiohttp at import, as before; containers only on their first call out.
    import aiohttp

logger = logging.getLogger(__name__)

_CLIENTS: dict[int, _Client] = {}


def reply_error(payload: bytes, default_type: str, default_message: str) -> BaseException:
    """The error an unsuccessful reply carries (``{"error": {"type", "message"}}``)."""
    err = unpack(payload).get("error", {}) if payload else {}
    return from_wire(err.get("type", default_type), err.get("message", default_message))


class _Client:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._url: str | None = None
        self._socket: str | None = None
        # Kept-alive connections for RPCs (a small HTTP/1.1 client: aiohttp's costs
        # more CPU per request than a Dict get costs the control plane).
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._idle_for: str | None = None

    @classmethod
    async def get(cls) -> _Client:
        loop = asyncio.get_running_loop()
        client = _CLIENTS.get(id(loop))
        if client is None:
            client = _CLIENTS[id(loop)] = cls()
        return client

    async def _locate(self) -> str:
        """Where the control plane is now (starting the embedded one if it is down)."""
        info = await asyncio.get_running_loop().run_in_executor(None, _server_manager.ensure)
        url = info.url
        if url.startswith("unix:"):
            self._socket, url = url[len("unix:") :], "http://ketch"
        self._url = url
        return url

    def _ensure_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector
            if self._socket:
                connector = aiohttp.UnixConnector(self._socket, limit=64)
            else:
                connector = aiohttp.TCPConnector(limit=64, force_close=False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
            )
        return self._session

    async def url(self) -> str:
        return self._url or await self._locate()

    async def rpc(self, method: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        data = pack(body)
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                url = self._url or await self._locate()
                status, payload = await asyncio.wait_for(self._post(url, f"/rpc/{method}", data), timeout)
                if status != 200:
                    raise reply_error(payload, "ServerError", f"HTTP {status}")
                return unpack(payload)
            except (TimeoutError, OSError) as exc:  # OSError: ConnectionError, a missing socket file
                if isinstance(exc, ConnectionFailedError) and not _server_manager.is_embedded():
                    raise
                if deadline is None:
                    deadline = time.monotonic() + config.get("connect_timeout")
                if time.monotonic() > deadline:
                    raise ConnectionFailedError(f"cannot reach the ketch control plane: {exc}") from exc
                logger.info("control plane unreachable (%s); retrying", exc)
                self._url = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _connect(self, url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle_for != url:
            for _, writer in self._idle:
                writer.close()
            self._idle, self._idle_for = [], url
        if self._idle:
            return self._idle.pop()
        if self._socket:
            return await asyncio.wait_for(asyncio.open_unix_connection(self._socket, limit=1 << 20), 5)
        host, _, port = url.removeprefix("http://").rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), limit=1 << 20), 5)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def _post(self, url: str, path: str, body: bytes) -> tuple[int, bytes]:
        """One HTTP/1.1 POST on a kept-alive connection; ``(status, body)``.

        A connection that fails (also one the server closed while idle) raises
        ``ConnectionError``; ``rpc`` retries, which every RPC allows.
        """
        reader, writer = await self._connect(url)
        reused = True
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: ketch\r\nContent-Type: application/msgpack\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
                elif name == "transfer-encoding":
                    raise ConnectionError("unexpected chunked reply")
            payload = await reader.readexactly(length) if length else b""
            reused = not close
            return status, payload
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            reused = False
            raise ConnectionError(f"bad reply from the control plane: {exc!r}") from exc
        except BaseException:
            reused = False
            raise
        finally:
            if reused and len(self._idle) < 64:
                self._idle.append((reader, writer))
            else:
                writer.close()

    async def put_blob(self, data: bytes) -> str:
        url = await self.url()
        async with self._ensure_session().put(f"{url}/blobs", data=data) as resp:
            return str(unpack(await resp.read())["blob_id"])

    async def get_blob(self, blob_id: str) -> bytes:
        url = await self.url()
        async with self._ensure_session().get(f"{url}/blobs/{blob_id}") as resp:
            payload = await resp.read()
            if resp.status != 200:
                raise reply_error(payload, "NotFoundError", "blob not found")
            return payload
