"""Framed msgpack: the container channel's wire format.

A frame is a 4-byte big-endian length followed by one msgpack map. Both the
asyncio side (control plane) and the blocking-socket side (container) live here.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME = 1100 * 1024 * 1024
# The first bytes of an RPC connection that speaks frames (see ``server/frames.py``).
RPC_MAGIC = b"KRPC/1\n"


class ChannelClosed(Exception):
    """The other end of the channel went away."""


def encode(msg: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode(body: bytes | memoryview) -> dict[str, Any]:
    msg: dict[str, Any] = msgpack.unpackb(body, raw=False, strict_map_key=False)
    return msg


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> dict[str, Any]:
    """The next frame; a frame over ``limit`` bytes closes the channel before it is read."""
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > limit:
            raise ChannelClosed(f"frame of {size} bytes is over the limit")
        return decode(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc)) from exc


class FrameBuffer:
    """Bytes received so far, cut into frames as they complete."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._scratch = bytearray(1 << 18)

    def receive(self, sock: socket.socket) -> int:
        """One ``recv`` into the buffer (into a reused scratch area: no allocation per call)."""
        n = sock.recv_into(self._scratch)
        if n:
            self.data += memoryview(self._scratch)[:n]
        return n

    def frames(self) -> list[dict[str, Any]]:
        """The complete frames at the front (removed from the buffer)."""
        out, data, at = [], self.data, 0
        with memoryview(data) as view:
            while len(data) - at >= HEADER.size:
                (size,) = HEADER.unpack_from(data, at)
                if size > MAX_FRAME:
                    raise ChannelClosed(f"frame of {size} bytes is over the limit")
                end = at + HEADER.size + size
                if len(data) < end:
                    break
                out.append(decode(view[at + HEADER.size : end]))
                at = end
        if at:
            del data[:at]
        return out


class BlockingChannel:
    """The container's end: a connected socket, reads from one thread, writes locked.

    ``read`` blocks for the next frame; a container serving web requests
    instead reads the socket from its event loop (``pending`` hands over
    what was already received).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._in = FrameBuffer()
        self._ready: list[dict[str, Any]] = []
        self._writing = threading.Lock()  # frames from many threads never interleave

    def read(self) -> dict[str, Any]:
        while not self._ready:
            if not self._in.receive(self.sock):
                raise ChannelClosed("control plane closed the channel")
            self._ready = self._in.frames()
            self._ready.reverse()  # popped from the end
        return self._ready.pop()

    def pending(self) -> tuple[list[dict[str, Any]], FrameBuffer]:
        """Frames read but not yet returned, and the buffer of a partial one: for another reader."""
        ready, self._ready = self._ready[::-1], []
        return ready, self._in

    def write(self, *msgs: dict[str, Any]) -> None:
        """Send ``msgs`` in one write."""
        data = b"".join(encode(msg) for msg in msgs)
        try:
            with self._writing:
                self.sock.sendall(data)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
