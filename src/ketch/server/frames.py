"""RPCs as length-prefixed msgpack frames, on the same port and socket as HTTP.

A connection that opens with ``_wire.RPC_MAGIC`` speaks frames: each request
is ``{"m": method, "b": body}`` and each reply ``{"s": status, "r": reply}``,
in order, one request at a time per connection. The first frame may be
``{"auth": token}`` (no reply): the caller of every request on the connection
(``auth``); requests without it get 401. Any other connection is
handed to aiohttp. Frames skip HTTP's parsing on both ends, which is most of
what a Dict or Queue operation costs; HTTP stays for blobs, for tools such
as ``curl``, and for anything written against ``POST /rpc/<Method>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from .._wire import HEADER, RPC_MAGIC, decode, encode
from ..exception import InvalidError, PayloadTooLargeError
from . import auth
from .api import MAX_RPC_BYTES, Api, error_reply

logger = logging.getLogger(__name__)


class FrameRpc(asyncio.Protocol):
    """One frame-speaking connection."""

    def __init__(self, api: Api, live: set[FrameRpc]) -> None:
        self.api = api
        self.live = live
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: asyncio.Task[Any] | None = None  # the reply being awaited, if any
        self.caller: auth.Caller | None = None
        self.first = True
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.live.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()
        # Behind a request that waits (a blocking Queue get), read no more than one
        # request's worth: the client cannot make the control plane hold more.
        if (
            self.waiting is not None
            and len(self.buf) > MAX_RPC_BYTES
            and self.transport is not None
        ):
            self.transport.pause_reading()
            self.paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting is not None:
            self.waiting.cancel()  # a long poll whose client went away
        self.transport = None
        self.live.discard(self)

    def _drain(self) -> None:
        """Answer the complete requests in the buffer, stopping at one that has to wait."""
        while self.waiting is None and self.transport is not None and len(self.buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buf)
            limit = MAX_RPC_BYTES if self.caller is not None else auth.UNAUTHENTICATED_MAX_BYTES
            if size > limit:
                too_large = PayloadTooLargeError(
                    f"a request of {size} bytes is over the limit of {limit} bytes"
                    + ("" if self.caller is not None else " before a valid token")
                )
                self._reply(*error_reply(too_large, "?"))
                self.transport.close()
                return
            end = HEADER.size + size
            if len(self.buf) < end:
                return
            frame = bytes(self.buf[HEADER.size : end])
            del self.buf[:end]
            try:
                request = decode(frame)
                if self.first:
                    self.first = False
                    if isinstance(request, dict) and "auth" in request:
                        self._authenticate(request["auth"])
                        continue
                method, body = str(request["m"]), request["b"]
            except Exception as exc:
                self._reply(*error_reply(InvalidError(f"malformed request frame: {exc}"), "?"))
                continue
            started = self.api.start(method, body, self.caller)
            if inspect.isawaitable(started):
                self.waiting = asyncio.ensure_future(started)
                self.waiting.add_done_callback(self._done)
            else:
                self._reply(*started)

    def _authenticate(self, token: Any) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        self.caller = self.api.auth.identify(token, auth.peer_uid(sock))

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.waiting = None
        if task.cancelled():
            return
        self._reply(*task.result())
        self._drain()
        if self.paused and self.waiting is None and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _reply(self, status: int, reply: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode({"s": status, "r": reply}))


class Sniffer(asyncio.Protocol):
    """Reads a connection's first bytes and hands it to frames or to aiohttp."""

    def __init__(
        self, api: Api, http: Callable[[], asyncio.BaseProtocol], live: set[FrameRpc]
    ) -> None:
        self.api = api
        self.http = http
        self.live = live
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.head += data
        if len(self.head) < len(RPC_MAGIC) and RPC_MAGIC.startswith(self.head):
            return  # too little to tell yet
        proto: asyncio.Protocol
        if self.head.startswith(RPC_MAGIC):
            proto, rest = FrameRpc(self.api, self.live), self.head[len(RPC_MAGIC) :]
        else:
            made = self.http()
            assert isinstance(made, asyncio.Protocol)
            proto, rest = made, self.head
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if rest:
            proto.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Listeners:
    """The sockets RPCs arrive on; ``close`` also ends the open frame connections."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.live: set[FrameRpc] = set()

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.live):
            if conn.transport is not None:
                conn.transport.close()


async def serve(
    api: Api,
    http: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    unix_path: str,
    tls: ssl.SSLContext | None = None,
    containers_path: str | None = None,
) -> Listeners:
    """Listen on ``host:port`` (with ``tls`` if given) and on the unix socket ``unix_path``
    (and on ``containers_path``, the one bound into containers: :data:`auth.CONTAINER_SOCKETS`)."""
    loop = asyncio.get_running_loop()
    listeners = Listeners()

    def sniffer() -> Sniffer:
        return Sniffer(api, http, listeners.live)

    listeners.servers.append(
        await loop.create_server(sniffer, host, port, reuse_address=True, ssl=tls)
    )
    for path in (unix_path, containers_path):
        if path is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if path == containers_path:
            auth.CONTAINER_SOCKETS.add(path)
        listeners.servers.append(await loop.create_unix_server(sniffer, path))
    return listeners
