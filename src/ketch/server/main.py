"""Entry point of the control plane process: ``python -m ketch.server --home DIR``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

from aiohttp import web

from .. import __version__
from .._config import config
from ..build import isolate
from ..worker.sandbox import SandboxWorker, socket_dir
from . import frames
from .api import Api
from .blobs import BlobStore
from .builds import BuildService
from .channel import serve_channel
from .dispatcher import Dispatcher
from .schedules import ScheduleRunner
from .store import Store
from .volumes import VolumeService
from .web import Gateway

logger = logging.getLogger("ketch.server")


def _pick_port(home: Path, requested: int) -> int:
    """Reuse the last port when it is free, so clients find a restarted server where it was."""
    if requested:
        return requested
    last = home / "last_port"
    if last.exists():
        port = int(last.read_text() or 0)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_info(home: Path, info: dict[str, object]) -> None:
    tmp = home / f"server.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info))
    tmp.replace(home / "server.json")


async def _reap_ephemeral_apps(store: Store, dispatcher: Dispatcher) -> None:
    """Stop ephemeral apps whose client went away without stopping them."""
    while True:
        timeout = float(config.get("ephemeral_app_timeout"))
        await asyncio.sleep(min(10.0, timeout / 3))
        cutoff = time.time() - timeout
        for app in store.running_apps():
            if not app["deployed"] and (app["heartbeat_at"] or 0) < cutoff:
                logger.info("stopping app %s: its client stopped sending heartbeats", app["id"])
                await dispatcher.stop_app(app["id"], wait=0)


def _choose_runtime(dispatcher: Dispatcher, home: Path, sockets: Path) -> None:
    """``sandbox`` where bubblewrap and root are available (``auto``), else ``local``, loudly."""
    wanted = str(config.get("runtime")).lower()
    if wanted not in ("auto", "sandbox", "local"):
        raise SystemExit(f"ketch: unknown runtime {wanted!r}; choose sandbox, local or auto")
    if wanted == "local":
        logger.warning("runtime 'local': containers are NOT isolated and images are not applied")
        return
    support = isolate.support()
    if not support.ok:
        if wanted == "sandbox":
            raise SystemExit(f"ketch: the sandbox runtime cannot run here: {support.reason}")
        logger.warning(
            "runtime 'local' (the sandbox runtime cannot run here: %s); containers are NOT isolated",
            support.reason,
        )
        return
    builds = BuildService(Path(config.get("image_cache")).expanduser())
    dispatcher.builds = builds
    dispatcher.worker = SandboxWorker(
        dispatcher._on_log,
        dispatcher._on_exit,
        home,
        builds.builder,
        sockets / "channel.sock",
        sockets / "api.sock",
        dispatcher.gpus,
    )


async def serve(home: Path, host: str, port: int, stop: asyncio.Event | None = None) -> None:
    """Run the control plane until SIGTERM/SIGINT (or until ``stop`` is set, for tests)."""
    home.mkdir(parents=True, exist_ok=True)
    store = Store(home / "state.db")
    port = _pick_port(home, port)
    url = f"http://{host}:{port}"
    max_containers = config.get("max_containers_per_node") or max(8, 4 * (os.cpu_count() or 1))
    dispatcher = Dispatcher(store, BlobStore(home / "blobs"), url, max_containers)
    dispatcher.volumes = VolumeService(store, home)
    await dispatcher.volumes.start()  # commits working copies a crash left behind
    api = Api(dispatcher, time.time())
    api.url = url
    sockets = socket_dir(home)
    channels = await serve_channel(dispatcher, host, str(sockets / "channel.sock"))
    _choose_runtime(dispatcher, home, sockets)
    await dispatcher.start()
    dispatcher.gateway = Gateway(dispatcher, host)
    await dispatcher.gateway.start()
    dispatcher.schedules = ScheduleRunner(dispatcher)
    dispatcher.schedules.start()
    # Long polls of clients that went away must not hold a shutdown for a minute.
    runner = web.AppRunner(api.app(), access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    assert runner.server is not None
    listeners = await frames.serve(api, runner.server, host, port, str(sockets / "api.sock"))
    (home / "last_port").write_text(str(port))
    _write_info(home, {"url": url, "pid": os.getpid(), "version": __version__, "started_at": api.started_at})
    logger.info("ketch control plane %s listening on %s", __version__, url)

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    reaper = asyncio.create_task(_reap_ephemeral_apps(store, dispatcher))
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        reaper.cancel()
        with contextlib.suppress(FileNotFoundError):
            info = json.loads((home / "server.json").read_text())
            if info.get("pid") == os.getpid():
                (home / "server.json").unlink()
        listeners.close()
        await runner.cleanup()
        await dispatcher.gateway.close()
        await dispatcher.schedules.close()
        for channel in channels:
            channel.close()
        await dispatcher.close()
        store.close()
        for name in ("api.sock", "channel.sock"):  # a stopped control plane leaves no sockets behind
            with contextlib.suppress(OSError):
                (sockets / name).unlink()
        with contextlib.suppress(OSError):
            sockets.rmdir()  # only if empty: sandbox containers' run directories may still be there


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ketch.server", description="Run the ketch control plane.")
    parser.add_argument("--home", default=None, help="state directory (default: KETCH_HOME or ~/.ketch)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("ketch: binding off loopback needs API tokens, which this version does not have yet")
    logging.basicConfig(
        level=config.get("log_level").upper() if config.get("log_level") else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    home = Path(args.home).expanduser() if args.home else config.home()
    asyncio.run(serve(home, args.host, args.port))


if __name__ == "__main__":
    main()
