"""The ketch worker of one Ray node: a long-lived async Ray actor pinned to it.

It runs the same hardened sandbox containers as the embedded runtime
(:class:`ketch.worker.bubblewrap.BubblewrapWorker`), in a home of its own on
the node (``node_home``, default ``/tmp/ketch-node-<id>``), with its own image
cache, user namespace and cgroup parent. What a container needs arrives from
the control plane (:mod:`ketch.cluster.ray_worker`):

* image layers and the ketch bundle, by name (content hash), as tar streams in
  Ray's object store, cached on the node;
* the app's source, as a snapshot with each start;
* the way back: the agent binds the container's ``channel.sock`` and
  ``api.sock`` to relays that carry each connection over TCP to the control
  plane's channel and API ports, where the container's scoped token is checked
  as on one machine. A ``block_network`` container needs no network for this.

Logs and exits go back as events the control plane long-polls (``events``).
This module is imported by Ray on the node; the control plane wraps the class
with ``ray.remote`` (ketch itself never imports Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _source
from .._config import config
from .._spec import FunctionSpec
from ..exception import ResourceUnavailableError
from ..images.builder import Builder, StepFailed
from ..images.layers import LayerStore, remove_tree
from ..server.blobs import BlobStore
from ..server.nodes import gpu_rows, memory_mib
from ..worker import gpus, isolate, userns
from ..worker import volumes as wc
from ..worker.bubblewrap import BubblewrapWorker, socket_dir
from ..worker.volumes import boot_id
from . import files

logger = logging.getLogger(__name__)

KINDS = (
    "layers",
    "bundles",
    "mounts",
)  # what the control plane ships, by folder of the image cache
# (mounts: copies of ``copy=False`` local paths, for nodes that do not share its files)
READY = {"layers": "meta.json", "bundles": "deps", "mounts": "data"}
EVENTS_WAIT_S = 5.0


def node_home(node_id: str) -> Path:
    base = config.get("node_home") or tempfile.gettempdir()
    return Path(base) / f"ketch-node-{node_id[:12]}"


def clear_leftovers(home: Path) -> None:
    """Unmount and delete what a node's worker that died (a node lost with its machine, say)
    left under ``home``: its containers' roots and binds, scratch disks and sockets. A new
    worker on the same home does this as it starts; tests call it for nodes they killed."""
    userns.clear(userns.run_dir(home))
    for disk in sorted((home / "scratch" / "disks").glob("*")):
        if os.path.ismount(disk):
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=60)
    if home.is_dir():
        for entry in sorted((home / "containers").glob("*")):
            remove_tree(entry)
    with contextlib.suppress(OSError, PermissionError):
        shutil.rmtree(socket_dir(home))


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve_relay(
    path: Path, host: str, port: int, tls: ssl.SSLContext | None = None
) -> asyncio.Server:
    """A unix socket at ``path`` whose every connection is carried to ``host:port`` over TCP
    (TLS with ``tls``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = await asyncio.start_unix_server(handle, str(path))
    os.chmod(path, 0o600)
    return server


class _Output:
    """A build step's output as it comes, for the control plane to read."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done = False
        self.changed = asyncio.Event()

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.changed.set()

    def finish(self) -> None:
        self.done = True
        self.changed.set()


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class NodeAgent:
    """One Ray node's containers. Every method runs on the actor's event loop."""

    def __init__(
        self, node_id: str, channel_addr: str, api_addr: str, ca: str | None = None
    ) -> None:
        self.node_id = node_id
        self.channel_addr = channel_addr
        self.api_addr = api_addr
        self.tls: ssl.SSLContext | None = None
        if ca:  # the control plane serves TLS: trust its certificate (and the system's CAs)
            self.tls = ssl.create_default_context()
            self.tls.load_verify_locations(cadata=ca)
        self.home = node_home(node_id)
        self._events: list[tuple[Any, ...]] = []
        self._wake: asyncio.Event | None = None
        self._relays: list[asyncio.Server] = []
        self._userns: userns.UserNamespace | None = None
        self.worker: BubblewrapWorker | None = None
        self.gpus: gpus.GpuAllocator | None = None
        self._builds: dict[str, _Output] = {}
        self._copies: dict[tuple[str, int], wc.State] = {}  # Volumes' copies: their state
        self.blobs: BlobStore | None = None  # Volumes' blobs (kept across workers: by id)

    async def setup(self) -> dict[str, Any]:
        """Start the node's runtime; returns what the node has (``ketch node list``)."""
        self._wake = asyncio.Event()
        support = isolate.support()
        if not support.ok:
            raise RuntimeError(f"the sandbox runtime cannot run on this node: {support.reason}")
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Several nodes may share a machine (and its cgroup tree): each keeps its own parent.
        os.environ.setdefault("KETCH_CGROUP_PARENT", f"ketch-node-{self.node_id[:12]}")
        sockets = socket_dir(self.home)
        channel = sockets / "channel.sock"
        api = sockets / "containers.sock"
        self._relays = [
            await serve_relay(channel, *_split(self.channel_addr), self.tls),
            await serve_relay(api, *_split(self.api_addr), self.tls),
        ]
        cache = self.home / "images"
        cache.mkdir(exist_ok=True)
        self.blobs = BlobStore(self.home / "blobs")
        self._userns, why_not = userns.start(self.home, probe_dirs=[cache])
        self.gpus = gpus.GpuAllocator(gpus.discover())
        self.worker = BubblewrapWorker(
            self._log,
            self._exit,
            self.home,
            Builder(LayerStore(cache), self._userns),
            channel,
            api,
            self.gpus,
            self._userns,
            why_not,
        )
        return self.describe()

    def describe(self) -> dict[str, Any]:
        assert self.worker is not None and self.gpus is not None
        _, available = memory_mib()  # (the total is Ray's: what it may place there)
        return {
            "node_id": self.node_id,
            "hostname": socket.gethostname(),
            # "" (never equal): what the control plane's files are, this node gets copies of.
            "boot_id": boot_id() if config.get("node_shares_files") else "",
            "memory_available_mib": available,
            "isolation": self.worker.isolation,
            "gpus": gpu_rows(self.gpus),
        }

    # -- bytes from the control plane -------------------------------------------------
    def _cache(self, kind: str, name: str) -> Path:
        if kind not in KINDS or not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad cache entry {kind}/{name}")
        return self.home / "images" / kind / name

    async def has(self, kind: str, name: str) -> bool:
        path = self._cache(kind, name)
        return os.path.lexists(path / READY[kind])

    async def receive(self, kind: str, name: str, chunks: Sequence[Any]) -> None:
        """Unpack a tar stream (``chunks``: Ray object refs, in order) as ``kind/name``."""
        target = self._cache(kind, name)
        if await self.has(kind, name):
            return
        staging = Path(tempfile.mkdtemp(dir=self.home / "images", prefix=".in-"))
        try:
            await asyncio.to_thread(files.unpack, chunks, staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                staging.rename(target)
            except OSError:  # another start unpacked it first
                if not await self.has(kind, name):
                    raise
        finally:
            if staging.exists():
                await asyncio.to_thread(remove_tree, staging)

    async def send(self, kind: str, name: str) -> list[Any]:
        """``kind/name`` of the node's image cache (a layer it built), as a tar stream."""
        refs, _ = await asyncio.to_thread(files.pack, self._cache(kind, name))
        return refs

    # -- image builds: the steps that run programs, for the control plane's builder ----
    async def build_layer(
        self,
        build_id: str,
        layer: dict[str, Any],
        chain: Sequence[str],
        cfg: dict[str, Any],
    ) -> dict[str, Any]:
        """Build one layer over ``chain`` (already here) into the node's cache; its output
        is read with :meth:`build_log`. Returns ``{}``, or ``{"error", "tail"}``."""
        assert self.worker is not None
        out = self._build_output(build_id)
        try:
            async with self.worker.builder.store.alock(layer["hash"]):
                await self.worker.builder.build_layer(layer, chain, cfg, out.add)
            return {}
        except StepFailed as exc:
            return {"error": str(exc), "tail": exc.tail}
        except Exception as exc:
            logger.exception("build step of layer %s failed", layer.get("hash", "?")[:12])
            return {"error": f"{type(exc).__name__}: {exc}", "tail": []}
        finally:
            out.finish()

    def _build_output(self, build_id: str) -> _Output:
        if not build_id.replace("-", "").isalnum():
            raise ValueError(f"bad build id {build_id!r}")
        return self._builds.setdefault(build_id, _Output())

    async def build_log(self, build_id: str, offset: int) -> tuple[list[str], bool]:
        """A build step's output lines from ``offset`` on (waits a few seconds for one), and
        whether the step has ended (its output is then forgotten once read to the end)."""
        out = self._build_output(build_id)
        if offset >= len(out.lines) and not out.done:
            out.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(out.changed.wait(), EVENTS_WAIT_S)
        lines = out.lines[offset:]
        if out.done:
            self._builds.pop(build_id, None)
        return lines, out.done

    # -- Volumes' working copies, for nodes that do not share the control plane's files --
    # A copy is filled from the Volume's entries and the node's cache of blobs (by id, each
    # sent once per node); what the container changes goes back as those entries alone.
    def _volume(self, container_id: str, index: int) -> Path:
        if not container_id.replace("-", "").isalnum() or index < 0:
            raise ValueError(f"bad volume {container_id}/{index}")
        return self.home / "volumes" / container_id / str(index)

    async def missing_blobs(self, blob_ids: Sequence[str]) -> list[str]:
        """Which of these blobs the node's cache lacks."""
        assert self.blobs is not None
        return [b for b in blob_ids if not self.blobs.exists(b)]

    async def receive_blobs(self, chunks: Sequence[Any]) -> None:
        """Blobs as a tar stream whose members are named by id, into the node's cache."""
        assert self.blobs is not None
        staging = Path(tempfile.mkdtemp(dir=self.home, prefix=".blobs-"))
        try:
            await asyncio.to_thread(files.unpack, chunks, staging)
            for name in os.listdir(staging):
                dest = self.blobs.path(name)  # (a blob id, or NotFoundError)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, dest)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    async def fill_volume(
        self, container_id: str, index: int, entries: list[dict[str, Any]], link: bool
    ) -> str:
        """A new copy of a working copy from its entries (blobs already here); its path.
        ``link``: read-only, so files may be hard links into the cache."""
        assert self.blobs is not None
        target = self._volume(container_id, index)
        await asyncio.to_thread(shutil.rmtree, target, True)
        self._copies[(container_id, index)] = await asyncio.to_thread(
            wc.materialize, target, entries, self.blobs.path, link
        )
        await self._sweep_blobs(entries)
        return str(target)

    async def _sweep_blobs(self, used: list[dict[str, Any]]) -> None:
        """Keep the node's blob cache under ``node_blob_cache_mb``: the blobs just used are
        the newest; read-only copies' hard links keep theirs; the oldest others go (the
        control plane sends a blob again when a copy needs it)."""
        assert self.blobs is not None
        blobs = self.blobs
        await asyncio.to_thread(blobs.touch, [e["blob"] for e in used if e.get("blob")])
        limit = int(config.get("node_blob_cache_mb")) << 20
        removed, freed = await asyncio.to_thread(blobs.sweep, limit)
        if removed:
            logger.info("node blob cache: removed %d blobs (%d MiB)", removed, freed >> 20)

    async def update_volume(
        self, container_id: str, index: int, entries: list[dict[str, Any]], link: bool
    ) -> None:
        """``vol.reload()``: the copy takes the newest entries; what the container changed
        and nothing committed since stays (as on the control plane's own copies)."""
        assert self.blobs is not None
        key = (container_id, index)
        self._copies[key] = await asyncio.to_thread(
            wc.update, self._volume(*key), self._copies[key], entries, self.blobs.path, link
        )
        await self._sweep_blobs(entries)

    async def volume_changes(
        self, container_id: str, index: int
    ) -> tuple[list[str], list[str], list[Any]]:
        """What the container changed in its copy since the last call: ``(changed entries,
        deleted entries, tar stream of the changed ones)``."""
        key = (container_id, index)
        state = self._copies[key]
        changed, deleted = await asyncio.to_thread(wc.scan, self._volume(*key), state)
        refs, _, included = await asyncio.to_thread(
            files.pack_changes, self._volume(*key), sorted(changed)
        )
        for rel, (kind, target, stat) in included.items():
            state[rel] = {"path": rel, "type": kind, "target": target, "stat": stat}
        for rel in deleted:
            state.pop(rel, None)
        return sorted(included), deleted, refs

    async def snapshot(self, container_id: str) -> list[Any]:
        """What the container has written, as a layer's ``fs`` (a tar stream)."""
        assert self.worker is not None
        dest = Path(tempfile.mkdtemp(dir=self.home, prefix=".snap-"))
        try:
            await self.worker.snapshot(container_id, dest)
            refs, _ = await asyncio.to_thread(files.pack, dest)
        finally:
            await asyncio.to_thread(remove_tree, dest)
        return refs

    async def drop_volumes(self, container_id: str) -> None:
        for key in [k for k in self._copies if k[0] == container_id]:
            del self._copies[key]
        await asyncio.to_thread(shutil.rmtree, self._volume(container_id, 0).parent, True)

    def _unpack_source(self, spec: FunctionSpec, source: tuple[str, bytes]) -> FunctionSpec:
        digest, data = source
        if not digest.isalnum():
            raise ValueError(f"bad source digest {digest!r}")
        target = self.home / "sources" / digest
        if not data and not target.is_dir():  # (sent once per node; this home lost it)
            raise RuntimeError(f"the node has no copy of source {digest}; start it again")
        target = _source.unpack_snapshot(data, target)
        assert spec.root_dir and spec.module_file
        rel = os.path.relpath(spec.module_file, spec.root_dir)
        return dataclasses.replace(spec, root_dir=str(target), module_file=str(target / rel))

    # -- containers ---------------------------------------------------------------------
    async def start(
        self,
        container_id: str,
        env: dict[str, str],
        spec: FunctionSpec,
        mounts: Sequence[tuple[str, str, bool]],
        source: tuple[str, bytes] | None,
    ) -> None:
        assert self.worker is not None and self.gpus is not None
        env = dict(env, KETCH_NODE_ID=self.node_id)
        if spec.gpu:
            got = self.gpus.allocate(container_id, spec.gpu)
            if got is None:
                raise ResourceUnavailableError(
                    f"node {self.node_id[:12]} has no free GPU for {spec.gpu} "
                    f"({self.gpus.inventory.describe()})"
                )
            env.update(gpus.visible_devices_env(got[1]))
        if source is not None:
            spec = self._unpack_source(spec, source)
        try:
            await self.worker.start(container_id, env, spec, mounts)
        except BaseException:
            self.gpus.release(container_id)
            raise

    async def terminate(self, container_id: str, grace: float) -> None:
        if self.worker is not None:
            self.worker.terminate(container_id, grace)

    async def kill(self, container_id: str) -> None:
        if self.worker is not None:
            self.worker.kill(container_id)

    async def allow_egress(self, container_id: str, networks: Sequence[str]) -> None:
        assert self.worker is not None
        await self.worker.allow_egress(container_id, networks)

    def _log(self, container_id: str, stream: str, text: str) -> None:
        self._push(("log", container_id, stream, text))

    def _exit(self, container_id: str, reason: str) -> None:
        if self.gpus is not None:
            self.gpus.release(container_id)
        self._push(("exit", container_id, reason))

    def _push(self, event: tuple[Any, ...]) -> None:
        self._events.append(event)
        if self._wake is not None:
            self._wake.set()

    async def events(self) -> list[tuple[Any, ...]]:
        """What happened since the last call: logs and exits (waits a few seconds for one)."""
        assert self._wake is not None
        if not self._events:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), EVENTS_WAIT_S)
        out, self._events = self._events, []
        return out

    async def shutdown(self, grace: float = 5.0) -> None:
        if self.worker is not None:
            await self.worker.shutdown(grace)
        for server in self._relays:
            server.close()
        if self._userns is not None:
            self._userns.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(socket_dir(self.home))
