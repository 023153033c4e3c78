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
import ssl
import time
from pathlib import Path

from aiohttp import web

from .. import __version__
from .._config import config
from ..worker import isolate, rootless, userns
from ..worker.bubblewrap import BubblewrapWorker, socket_dir
from ..worker.local import LocalWorker
from . import frames
from .api import Api
from .auth import Authenticator
from .blobs import BlobStore
from .builds import BuildService
from .channel import serve_channel
from .dispatcher import Dispatcher
from .sandboxes import SandboxService
from .schedules import ScheduleRunner
from .store import Store
from .volumes import VolumeService
from .web import Gateway

logger = logging.getLogger("ketch.server")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


def _private_home(home: Path) -> None:
    """``KETCH_HOME`` holds the owner's token and the state: only its owner may enter."""
    home.mkdir(parents=True, exist_ok=True)
    st = home.stat()
    if st.st_uid != os.geteuid():
        raise SystemExit(
            f"ketch: {home} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
        )
    if st.st_mode & 0o077:
        os.chmod(home, st.st_mode & 0o700)


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


def _choose_runtime(
    dispatcher: Dispatcher, volumes: VolumeService, home: Path, sockets: Path, on_ray: bool = False
) -> userns.UserNamespace | None:
    """``sandbox`` where bubblewrap and root are available (``auto``), else ``local``, loudly.
    ``on_ray``: containers, and build steps, run on the nodes of a Ray cluster; this machine
    keeps the image cache and Volumes' working copies.

    Returns the sandboxes' user namespace, for the caller to close at shutdown.
    """
    wanted = str(config.get("runtime")).lower()
    if wanted not in ("auto", "sandbox", "local"):
        raise SystemExit(f"ketch: unknown runtime {wanted!r}; choose sandbox, local or auto")
    if on_ray:
        wanted = "sandbox"
    if wanted == "local":
        logger.warning("runtime 'local': containers are NOT isolated and images are not applied")
        return None
    support = isolate.support()
    cache = Path(config.get("image_cache")).expanduser()
    if support.ok and rootless.current() is not None:  # overlayfs in a user namespace, here?
        if why := isolate.probe_overlay(cache, home):
            if note := rootless.userns_restrictions():
                why = f"{why} ({note})"
            support = isolate.Support(False, why, support.bwrap)
    if not support.ok:
        if wanted == "sandbox":
            raise SystemExit(f"ketch: the sandbox runtime cannot run here: {support.reason}")
        logger.warning(
            "runtime 'local' (the sandbox runtime cannot run here: %s); containers are NOT isolated",
            support.reason,
        )
        if isinstance(dispatcher.services.worker, LocalWorker):
            dispatcher.services.worker.why_not_sandbox = support.reason  # for `ketch server status`
        return None
    ns, why_not = userns.start(home, probe_dirs=[cache])
    if ns is None and rootless.current() is None:
        logger.warning("sandbox containers run as host root, with no user namespace: %s", why_not)
    builds = BuildService(cache, ns)
    builds.metrics = dispatcher.metrics
    volumes.userns = ns
    dispatcher.services.builds = builds
    if on_ray:
        return ns
    dispatcher.services.worker = BubblewrapWorker(
        dispatcher.container_log,
        dispatcher.container_exited,
        home,
        builds.builder,
        sockets / "channel.sock",
        sockets / "containers.sock",
        dispatcher.gpus,
        ns,
        why_not,
    )
    return ns


async def _join_ray(
    dispatcher: Dispatcher, address: str, host: str, port: int, ca: str | None
) -> None:
    """Containers on the nodes of the Ray cluster at ``address`` (ketch.cluster)."""
    from ..cluster.ray_worker import RayWorker

    builds = dispatcher.services.builds
    if builds is None:
        raise SystemExit("ketch: --ray needs the sandbox runtime here, to build images")
    advertise = str(config.get("advertise_address") or "")
    if not advertise:
        advertise = "127.0.0.1" if host in LOOPBACK else host
    if advertise in ("0.0.0.0", "::"):
        raise SystemExit(
            "ketch: serving on all addresses: set advertise_address (KETCH_ADVERTISE_ADDRESS) to the one nodes reach"
        )
    channel_port = dispatcher.channel_addr.rpartition(":")[2]
    per_node = dispatcher.max_containers

    def capacity(total: int) -> None:
        dispatcher.max_containers = total

    worker = RayWorker(
        address,
        dispatcher.container_log,
        dispatcher.container_exited,
        builds.builder,
        f"{advertise}:{channel_port}",
        f"{advertise}:{port}",
        per_node,
        capacity,
        ca,
    )
    worker.connect()
    await worker.start_nodes()
    dispatcher.services.worker = worker
    dispatcher.gpus = worker.gpus
    if isinstance(dispatcher.services.volumes, VolumeService):
        dispatcher.services.volumes.nodes = worker  # copies on nodes that need them
        worker.blobs = dispatcher.services.volumes.blobs
    logger.info("containers run on %s", worker.isolation)


def _tls_context(
    host: str, cert: str | None, key: str | None, insecure: bool
) -> ssl.SSLContext | None:
    """TLS for the API; required off loopback unless ``insecure`` (tokens would travel in clear)."""
    if bool(cert) != bool(key):
        raise SystemExit("ketch: give both --tls-cert and --tls-key")
    if cert and key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context
    if host not in LOOPBACK and not insecure:
        raise SystemExit(
            f"ketch: serving on {host} (off loopback) sends tokens over the network: give "
            "--tls-cert and --tls-key, or --insecure to do it in clear text anyway"
        )
    return None


async def serve(
    home: Path,
    host: str,
    port: int,
    stop: asyncio.Event | None = None,
    tls: ssl.SSLContext | None = None,
    tls_cert: str | None = None,
) -> None:
    """Run the control plane until SIGTERM/SIGINT (or until ``stop`` is set, for tests)."""
    _private_home(home)
    # The state: a SQLite file in KETCH_HOME, or PostgreSQL (`database` / KETCH_DATABASE).
    store = Store(config.get("database") or home / "state.db")
    port = _pick_port(home, port)
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    max_containers = config.get("max_containers_per_node") or max(8, 4 * (os.cpu_count() or 1))
    # Blobs (arguments, results, deploy snapshots, Volume files): KETCH_HOME, or `blob_dir`
    # (storage shared with the machine a control plane on PostgreSQL may move to).
    blob_root = Path(config.get("blob_dir") or home).expanduser()
    for private in (blob_root / "blobs", blob_root / "volumes"):  # others' data: owner only
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.chmod(0o700)
    dispatcher = Dispatcher(store, BlobStore(blob_root / "blobs"), url, max_containers)
    volumes = dispatcher.services.volumes = VolumeService(store, home, blob_root)
    dispatcher.sandboxes = SandboxService(dispatcher)
    await volumes.start()  # commits working copies a crash left behind
    api = Api(dispatcher, time.time(), Authenticator(home, store, dispatcher.container_caller))
    api.url = url
    sockets = socket_dir(home)
    ray_address = str(config.get("ray") or "")
    # Containers and web endpoints stay on loopback whatever the API's address, unless
    # they run on a cluster's nodes, which reach the channel where they reach the API.
    channel_host = host if ray_address else "127.0.0.1"
    channels = await serve_channel(
        dispatcher, channel_host, str(sockets / "channel.sock"), tls if ray_address else None
    )
    containers_userns = None
    try:
        containers_userns = _choose_runtime(dispatcher, volumes, home, sockets, bool(ray_address))
        if ray_address:
            # With TLS, the nodes' relays speak it too, trusting the server's certificate.
            ca = Path(tls_cert).read_text() if tls is not None and tls_cert else None
            await _join_ray(dispatcher, ray_address, host, port, ca)
    except BaseException:  # refused to start (no sandbox runtime, no Ray cluster): nothing left
        for channel in channels:
            channel.close()
        if containers_userns is not None:
            containers_userns.close()
        _remove_sockets(sockets)
        raise
    await dispatcher.start()
    gateway = dispatcher.services.gateway = Gateway(dispatcher, "127.0.0.1")
    await gateway.start()
    schedules = dispatcher.services.schedules = ScheduleRunner(dispatcher)
    schedules.start()
    # Long polls of clients that went away must not hold a shutdown for a minute.
    runner = web.AppRunner(
        api.app(), access_log=None, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    assert runner.server is not None
    listeners = await frames.serve(
        api,
        runner.server,
        host,
        port,
        str(sockets / "api.sock"),
        tls,
        str(sockets / "containers.sock"),
    )
    (home / "last_port").write_text(str(port))
    _write_info(
        home,
        {
            "url": url,
            "socket": str(sockets / "api.sock"),
            "channel": dispatcher.channel_addr,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": api.started_at,
        },
    )
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
        await gateway.close()
        await schedules.close()
        await dispatcher.sandboxes.close()
        for channel in channels:
            channel.close()
        await dispatcher.close()
        if containers_userns is not None:
            containers_userns.close()
        store.close()
        _remove_sockets(sockets)


def _remove_sockets(sockets: Path) -> None:
    """A stopped control plane leaves no sockets behind."""
    for name in ("api.sock", "containers.sock", "channel.sock"):
        with contextlib.suppress(OSError):
            (sockets / name).unlink()
    with contextlib.suppress(OSError):
        sockets.rmdir()  # only if empty: sandbox containers' run directories may still be there


def _enter_rootless() -> None:
    """An ordinary account's control plane moves into a user namespace of its own."""
    state = rootless.enter()
    for note in state.notes:
        logger.warning("rootless: %s", note)
    if state.mapping is not None:
        logger.info("%s", state.mapping.describe())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ketch.server", description="Run the ketch control plane."
    )
    parser.add_argument(
        "--home", default=None, help="state directory (default: KETCH_HOME or ~/.ketch)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--tls-cert", default=None, help="certificate (PEM) for the API off loopback"
    )
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")
    parser.add_argument("--insecure", action="store_true", help="serve off loopback without TLS")
    args = parser.parse_args(argv)
    tls = _tls_context(args.host, args.tls_cert, args.tls_key, args.insecure)
    logging.basicConfig(
        level=config.get("log_level").upper() if config.get("log_level") else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    home = Path(args.home).expanduser() if args.home else config.home()
    if os.geteuid() != 0 and str(config.get("runtime")).lower() != "local":
        _enter_rootless()  # first, while this process has one thread
    asyncio.run(serve(home, args.host, args.port, tls=tls, tls_cert=args.tls_cert))


if __name__ == "__main__":
    main()
