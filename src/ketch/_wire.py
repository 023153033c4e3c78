"""Framed msgpack: the container channel's wire format.

A frame is a 4-byte big-endian length followed by one msgpack map. Both the
asyncio side (control plane) and the blocking-socket side (container) live here.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME = 1100 * 1024 * 1024
# The first bytes of an RPC connection that speaks frames (see ``server/frames.py``).
RPC_MAGIC = b"KRPC/1\n"


class ChannelClosed(Exception):
    """The other end of the channel went away."""


def encode(msg: dict[str, Any]) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ChannelClosed(f"frame of {size} bytes is over the limit")
        return decode(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc)) from exc


class BlockingChannel:
    """The container's end: a connected socket, reads from one thread, writes locked."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb", buffering=1024 * 1024)

    def read(self) -> dict[str, Any]:
        header = self._file.read(HEADER.size)
        if len(header) < HEADER.size:
            raise ChannelClosed("control plane closed the channel")
        (size,) = HEADER.unpack(header)
        body = self._file.read(size)
        if len(body) < size:
            raise ChannelClosed("control plane closed the channel mid-frame")
        return decode(body)

    def write(self, *msgs: dict[str, Any]) -> None:
        """Send ``msgs`` in one write."""
        try:
            self._sock.sendall(b"".join(encode(msg) for msg in msgs))
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
