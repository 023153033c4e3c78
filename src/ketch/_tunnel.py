"""``ketch.forward`` and ``ketch.Tunnel``: a container's port, reachable from outside it.

As Modal's: inside a function, ``with ketch.forward(8000) as tunnel:`` makes
port 8000 of the container reachable at ``tunnel.url`` until the block ends;
``Sandbox.create(encrypted_ports=[8000])`` and ``sb.tunnels()`` do the same for
a sandbox. ketch's tunnels listen on the control plane's web host (127.0.0.1
by default) and carry plain TCP: ``url`` is ``http://``, and a tunnel is
open to whoever can reach that port, as a Modal tunnel's public URL is
(docs/architecture.md, "Tunnels").

Example::

    @app.function()
    def notebook():
        with ketch.forward(8888) as tunnel:
            print("open", tunnel.url)
            subprocess.run(["jupyter", "lab", "--port", "8888"])
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from . import _sync
from ._client import _Client
from .exception import InvalidError


@dataclass(frozen=True)
class Tunnel:
    """A forwarded port: ``url``, ``tls_socket`` and ``tcp_socket`` reach it."""

    host: str
    port: int
    unencrypted_host: str
    unencrypted_port: int

    @property
    def url(self) -> str:
        """``http://host:port`` (a loopback tunnel has no TLS)."""
        return f"http://{self.host}:{self.port}"

    @property
    def tls_socket(self) -> tuple[str, int]:
        """``(host, port)``; on ketch the same plain TCP port as ``tcp_socket``."""
        return (self.host, self.port)

    @property
    def tcp_socket(self) -> tuple[str, int]:
        """``(host, port)`` for plain TCP."""
        return (self.unencrypted_host, self.unencrypted_port)

    @classmethod
    def _from_wire(cls, info: dict[str, Any]) -> Tunnel:
        host, port = str(info["host"]), int(info["public_port"])
        return cls(host, port, host, port)


@contextlib.asynccontextmanager
async def _forward(
    port: int, *, unencrypted: bool = False, h2_enabled: bool = False
) -> AsyncIterator[Tunnel]:
    from ._config import in_container

    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidError(f"forward() needs a port between 1 and 65535, not {port!r}")
    if not in_container():
        raise InvalidError("ketch.forward() works inside a ketch container (in a function)")
    client = await _Client.get()
    info = await client.rpc("TunnelOpen", {"port": port})
    try:
        yield Tunnel._from_wire(info)
    finally:
        with contextlib.suppress(Exception):
            await client.rpc("TunnelClose", {"port": port})


def forward(port: int, *, unencrypted: bool = False, h2_enabled: bool = False) -> Any:
    """Make ``port`` of this container reachable from outside it while the block runs:
    ``with ketch.forward(8000) as tunnel: print(tunnel.url)`` (``async with`` too)."""
    return _sync._ContextManager(_forward(port, unencrypted=unencrypted, h2_enabled=h2_enabled))
