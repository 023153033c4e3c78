"""An in-process control plane on a free loopback port, for API-level tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.server.main import serve


class InProcessServer:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""
        self.socket = ""
        self.token = ""
        self.headers: dict[str, str] = {}

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop_event = asyncio.Event()
            await serve(self.home, "127.0.0.1", 0, stop=self.stop_event)

        try:
            self.loop.run_until_complete(main())
        finally:
            self.loop.close()

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        info = self.home / "server.json"
        while not info.exists():
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process control plane did not start")
            time.sleep(0.02)
        written = json.loads(info.read_text())
        self.url = written["url"]
        self.socket = written["socket"]
        self.token = (self.home / "token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    home = tmp_path_factory.mktemp("ketch-home")
    mp = pytest.MonkeyPatch()
    # These functions live in test modules that import pytest, which images lack.
    mp.setenv("KETCH_RUNTIME", "local")
    server = InProcessServer(home)
    server.start()
    # The unix socket, as the SDK uses for the embedded control plane: only there may a
    # client name local files (its app's source).
    mp.setenv("KETCH_SERVER_URL", "unix:" + server.socket)
    mp.setenv("KETCH_HOME", str(home))
    try:
        yield server
    finally:
        mp.undo()
        server.stop()
