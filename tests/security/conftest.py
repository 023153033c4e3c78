"""A control plane of the security tests' own, in this process, on a free loopback port.

Attack tests may stop its apps, fill its stores or revoke its tokens: it lives
for one test module and nothing else shares it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.server.main import serve


class OwnControlPlane:
    """``serve`` on a thread of its own; ``url`` and the owner's ``headers`` once it runs."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = ""
        self.headers: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._run, name="security-control-plane", daemon=True
        )

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self.home, "127.0.0.1", 0, stop=self._stop)

        self._loop.run_until_complete(main())

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        info = self.home / "server.json"
        deadline = time.monotonic() + timeout
        while (
            not info.exists()
        ):  # serve() writes it once it listens; there is no event to await across threads
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the control plane did not start")
            time.sleep(0.02)
        self.url = json.loads(info.read_text())["url"]
        token = self.home / "token"  # the owner's token, written at the first start
        if token.exists():
            self.headers = {"Authorization": f"Bearer {token.read_text().strip()}"}

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("the control plane did not stop within 30 s")


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnControlPlane]:
    home = tmp_path_factory.mktemp("ketch-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("KETCH_RUNTIME", "local")
    mp.setenv("KETCH_HOME", str(home))
    server = OwnControlPlane(home)
    server.start()
    mp.setenv("KETCH_SERVER_URL", server.url)
    try:
        yield server
    finally:
        mp.undo()
        server.stop()
