"""The container channel: one framed-msgpack connection per container.

A container says hello with its id and token, gets its ``init`` message, and
from then on receives inputs and sends outputs on the same connection. A
connection whose hello is ``{"t": "tunnel", "id"}`` is instead the container's
side of one tunnelled connection (:mod:`ketch.server.tunnels`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl

from .._wire import ChannelClosed, encode, read_frame
from ..exception import InvalidError
from .auth import UNAUTHENTICATED_MAX_BYTES
from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)


async def serve_channel(
    dispatcher: Dispatcher,
    host: str = "127.0.0.1",
    unix_path: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> list[asyncio.Server]:
    """Listen on TCP (``local`` containers; a cluster's nodes, with ``tls`` where the API has
    it) and, if given, a unix socket (sandboxes)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        container_id = None
        try:
            # Before its token is checked, a peer may not make us hold more than a hello.
            hello = await read_frame(reader, limit=UNAUTHENTICATED_MAX_BYTES)
            if not isinstance(hello, dict):
                raise InvalidError("the first frame must be a hello map")
            if hello.get("t") == "tunnel":  # one connection of a tunnel (ketch.server.tunnels)
                relayed = dispatcher.tunnels.attach(hello, reader, writer)
                if relayed is not None:
                    await relayed
                return
            container_id = str(hello.get("container_id"))
            init = dispatcher.container_hello(container_id, str(hello.get("token")), writer)
            writer.write(encode(init))
            while True:
                msg = await read_frame(reader)
                dispatcher.container_message(container_id, msg)
        except (ChannelClosed, InvalidError) as exc:
            logger.debug("channel of %s closed: %s", container_id, exc)
        except Exception:
            logger.exception("channel of %s failed", container_id)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if container_id is not None and container_id in dispatcher.containers:
                # A container that lost its channel can do nothing useful.
                dispatcher.containers[container_id].writer = None
                dispatcher.worker.terminate(container_id, 1.0)

    server = await asyncio.start_server(handle, host, 0, limit=1 << 20, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    dispatcher.channel_addr = f"{host}:{port}"
    servers = [server]
    if unix_path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix_path)
        servers.append(await asyncio.start_unix_server(handle, unix_path, limit=1 << 20))
    return servers
