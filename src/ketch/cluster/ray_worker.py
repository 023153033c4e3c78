"""Containers on a Ray cluster: the control plane's side (``ketch server start --ray ADDRESS``).

Decided by measurement (``benchmarks/ray_placement.py``, docs/cluster.md): one
ketch worker per node (:class:`ketch.cluster.agent.NodeAgent`, an actor pinned
there with no resources of its own) and one placement group per container.

* **Placement.** A container's ``cpu``, ``memory`` and ``gpu`` become the one
  bundle of a placement group; Ray picks the node and accounts the resources,
  and its autoscaler, where the cluster has one, sees a pending group as demand.
  A GPU type is asked as ``accelerator_type:<TYPE>`` (Ray's own label) when the
  cluster has that label.
* **Bytes.** This machine's image cache is the cluster's: a node gets each
  layer, and the ketch bundle, once, by content hash, through Ray's object
  store; build steps that run programs run on a node and their layers come
  back here (``build_step``). The app's source travels with each start.
  Volumes' working copies are bound on nodes that share this machine's files
  and copied to and from the others (docs/cluster.md).
* **Node loss is preemption.** When a node's agent dies (its node was killed
  or drained), its containers end as preempted: the dispatcher puts their
  inputs back at the front of the queue without counting against ``retries``,
  and starts new containers on the nodes that are left.

It is the dispatcher's :class:`~ketch.server.services.Worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _source
from .._config import config
from .._ids import new_id
from .._spec import FunctionSpec
from .._tasks import spawn
from ..exception import InvalidError
from ..images.builder import Builder, Log, StepFailed
from ..images.layers import remove_tree
from ..server.blobs import BlobStore
from ..worker import gpus
from ..worker import volumes as wc
from ..worker.bubblewrap import image_for, materialize_mount
from ..worker.volumes import boot_id
from . import files
from .agent import NodeAgent

logger = logging.getLogger(__name__)

NAMESPACE = "ketch"
DEFAULT_CPU = 0.125  # Modal's default CPU request
WATCH_S = 1.0
# A node whose worker failed to start is tried again after 2 s, then twice as long each
# time, up to a minute (a node still coming up is ready soon; a broken one is not).
RETRY_NODE_S = (2.0, 60.0)
UNREACHABLE_TRIES = 3  # events calls in a row that find a node's worker unreachable: lost


@dataclass
class _Node:
    node_id: str
    agent: Any  # Ray actor handle
    info: dict[str, Any]
    resources: dict[str, float]
    address: str = ""
    containers: set[str] = field(default_factory=set)
    have: set[str] = field(default_factory=set)  # "kind/name" known to be on the node
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    events: asyncio.Task[None] | None = None


@dataclass
class _Placed:
    pg: Any  # Ray placement group
    node: _Node | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    gang: str = ""  # a gang's id: its members share one placement group, a bundle each
    # Volumes' working copies copied to a node that does not share this machine's files:
    # (working copy here, index on the node, read-only), in mount order.
    volumes: list[tuple[str, int, bool]] = field(default_factory=list)


class ClusterGpus(gpus.GpuAllocator):
    """GPUs as the control plane sees them on a cluster: every node's, for checks; each
    node's agent hands its own devices out."""

    def __init__(self, nodes: Callable[[], Sequence[_Node]]) -> None:
        super().__init__(gpus.Inventory((), "none: no node has GPUs"))
        self._nodes = nodes

    @property
    def inventory(self) -> gpus.Inventory:
        found = [
            gpus.Gpu(
                i, f"{n.node_id[:12]}-{g['index']}", g["name"], g["type"], g["memory_mib"], None
            )
            for i, (n, g) in enumerate((n, g) for n in self._nodes() for g in n.info["gpus"])
        ]
        return gpus.Inventory(
            tuple(found), "ray" if found else "none: no node of the cluster has GPUs"
        )

    @inventory.setter
    def inventory(self, value: gpus.Inventory) -> None:
        pass

    def allocate(
        self, owner: str, options: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, Any], list[gpus.Gpu]] | None:
        return dict(options[0]), []  # the node's agent picks the devices

    def release(self, owner: str) -> None:
        pass

    def busy(self) -> dict[str, list[int]]:
        return {}


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SystemExit(
            "ketch: --ray needs Ray on the control plane and every node: pip install 'ketch[ray]'"
        ) from None
    return ray


class RayWorker:
    """Starts, stops and watches containers on the nodes of a Ray cluster."""

    name = "sandbox"
    enforces_read_only = True

    def __init__(
        self,
        address: str,
        on_log: Callable[[str, str, str], None],
        on_exit: Callable[..., None],
        builder: Builder,
        channel_addr: str,
        api_addr: str,
        per_node: int,
        on_capacity: Callable[[int], None],
        ca: str | None = None,
    ) -> None:
        self.address = address
        self._on_log = on_log
        self._on_exit = on_exit
        self.builder = builder
        self.channel_addr = channel_addr
        self.api_addr = api_addr
        self.per_node = per_node
        self._on_capacity = on_capacity
        self.ca = ca  # PEM the nodes' relays trust for TLS to the channel and API (None: plain)
        self.nodes: dict[str, _Node] = {}
        self._placed: dict[str, _Placed] = {}
        self._gangs: dict[str, list[Any]] = {}  # gang id -> [placement group, members in it]
        self._watch: asyncio.Task[None] | None = None
        self._boot_id = boot_id()
        self.gpus = ClusterGpus(lambda: list(self.nodes.values()))
        self.placement_timeout = float(config.get("ray_placement_timeout"))
        self._syncing = asyncio.Lock()  # one look at the node table at a time: one worker a node
        self._failed: dict[str, tuple[float, float]] = {}  # node -> (when to try again, wait)
        self.blobs: BlobStore | None = None  # Volumes' blobs, for nodes that get copies
        if config.get("cluster_builds"):
            builder.remote = self.build_step

    # -- the cluster -----------------------------------------------------------------
    def connect(self) -> None:
        """Join the cluster as a driver (on the main thread: Ray sets signal handlers)."""
        ray = _ray()
        host, _, port = self.address.rpartition(":")
        try:  # Ray would retry for minutes: say at once that nothing answers there
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except (OSError, ValueError) as exc:
            raise SystemExit(
                f"ketch: no Ray cluster answers at {self.address} ({exc}); start one with "
                "`ray start --head`, or give --ray the address `ray status` shows"
            ) from None
        ray.init(
            address=self.address,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            configure_logging=False,  # the control plane's own logging stays as it is
            log_to_driver=False,
        )

    async def start_nodes(self) -> None:
        await self._sync_nodes()
        if not self.nodes:
            raise SystemExit(f"ketch: the Ray cluster at {self.address} has no node ketch can use")
        self._watch = spawn(self._watch_nodes(), name="watch ray nodes")

    async def _watch_nodes(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                await self._sync_nodes()
            except Exception:
                logger.exception("could not read the Ray cluster's nodes")

    async def _sync_nodes(self) -> None:
        async with self._syncing:
            listed = await asyncio.to_thread(_ray().nodes)
            alive = {n["NodeID"]: n for n in listed if n.get("Alive")}
            for node_id in list(self.nodes):
                if node_id not in alive:
                    self._lost(self.nodes[node_id], "its Ray node is gone")
            now = time.monotonic()
            new = [
                n
                for node_id, n in alive.items()
                if node_id not in self.nodes and now >= self._failed.get(node_id, (0.0, 0.0))[0]
            ]
            if new:
                await asyncio.gather(*(self._add_node(n) for n in new))
            self._on_capacity(self.per_node * max(1, len(self.nodes)))

    async def _add_node(self, row: dict[str, Any]) -> None:
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node_id = row["NodeID"]
        agent = (
            ray.remote(NodeAgent)
            .options(
                num_cpus=0,
                max_concurrency=1000,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            .remote(node_id, self.channel_addr, self.api_addr, self.ca)
        )
        try:
            info = await agent.setup.remote()
        except Exception as exc:
            wait = min(
                self._failed.get(node_id, (0.0, RETRY_NODE_S[0] / 2))[1] * 2, RETRY_NODE_S[1]
            )
            logger.warning(
                "node %s runs no ketch containers (tried again in %.0f s): %s",
                node_id[:12],
                wait,
                exc,
            )
            self._failed[node_id] = (time.monotonic() + wait, wait)
            with contextlib.suppress(Exception):
                ray.kill(agent)
            return
        self._failed.pop(node_id, None)
        node = _Node(
            node_id, agent, info, dict(row.get("Resources", {})), row.get("NodeManagerAddress", "")
        )
        self.nodes[node_id] = node
        node.events = spawn(self._events(node), name=f"events of node {node_id[:12]}")
        logger.info(
            "node %s joined: %s CPUs, %s",
            node_id[:12],
            node.resources.get("CPU", 0),
            info["isolation"],
        )

    async def _events(self, node: _Node) -> None:
        ray = _ray()
        unreachable = 0
        while self.nodes.get(node.node_id) is node:
            try:
                events = await node.agent.events.remote()
                unreachable = 0
            except ray.exceptions.ActorUnavailableError as exc:
                # Perhaps a blip of the network; perhaps the node is gone. Ask a few times.
                unreachable += 1
                if unreachable >= UNREACHABLE_TRIES:
                    self._lost(node, f"its ketch worker is unreachable ({exc.__class__.__name__})")
                    return
                await asyncio.sleep(1.0)
                continue
            except ray.exceptions.RayActorError as exc:
                self._lost(node, f"its ketch worker died ({type(exc).__name__})")
                return
            except Exception as exc:  # a transient error of Ray's
                logger.warning("events of node %s: %s", node.node_id[:12], exc)
                await asyncio.sleep(1.0)
                continue
            for event in events:
                if event[0] == "log":
                    self._on_log(event[1], event[2], event[3])
                elif event[0] == "exit":
                    self._exited(event[1], event[2])

    def _lost(self, node: _Node, why: str) -> None:
        """A node went away: its containers were preempted."""
        if self.nodes.pop(node.node_id, None) is None:
            return
        logger.warning(
            "node %s lost (%s): %d containers preempted",
            node.node_id[:12],
            why,
            len(node.containers),
        )
        for container_id in list(node.containers):
            self._exited(
                container_id, f"was lost with node {node.node_id[:12]} ({why}): preempted", True
            )
        if node.events is not None and node.events is not asyncio.current_task():
            node.events.cancel()
        # Make sure: a worker that was only unreachable must not keep running what was
        # started again elsewhere (its relays die with it, and so do its containers).
        with contextlib.suppress(Exception):
            _ray().kill(node.agent)
        self._on_capacity(self.per_node * max(1, len(self.nodes)))

    def _exited(self, container_id: str, reason: str, preempted: bool = False) -> None:
        placed = self._placed.pop(container_id, None)
        if placed is None:
            return
        if placed.node is not None:
            placed.node.containers.discard(container_id)
        self._release(placed)
        if placed.volumes and placed.node is not None and not preempted:
            # What it wrote comes back before the exit commits it (a lost node's is lost).
            spawn(self._exit_after_pull(container_id, placed, reason), name=f"pull {container_id}")
        elif preempted:
            self._on_exit(container_id, reason, preempted=True)
        else:
            self._on_exit(container_id, reason)

    async def _exit_after_pull(self, container_id: str, placed: _Placed, reason: str) -> None:
        try:
            await self._pull(container_id, placed)
            assert placed.node is not None
            await placed.node.agent.drop_volumes.remote(container_id)
        except Exception:
            logger.exception("could not bring back the Volumes of container %s", container_id)
        finally:
            self._on_exit(container_id, reason)

    # -- Volumes on nodes that do not share this machine's files -------------------------
    def _shares_files(self, node: _Node) -> bool:
        return bool(self._boot_id) and node.info["boot_id"] == self._boot_id

    async def _copy_volumes(
        self,
        container_id: str,
        placed: _Placed,
        node: _Node,
        mounts: list[tuple[str, str, bool]],
    ) -> list[tuple[str, str, bool]]:
        """Fill the node's copies of the container's working copies; the mounts there."""
        out = []
        for index, (host_dir, path, read_only) in enumerate(mounts):
            entries = await self._send_blobs(node, host_dir)
            there = await node.agent.fill_volume.remote(container_id, index, entries, read_only)
            placed.volumes.append((host_dir, index, read_only))
            out.append((there, path, read_only))
        return out

    async def _send_blobs(self, node: _Node, host_dir: str) -> list[dict[str, Any]]:
        """The entries of the working copy at ``host_dir``, after sending ``node`` the blobs
        of theirs it lacks (once per node: its cache keeps them)."""
        info = await asyncio.to_thread(wc.load_state, Path(host_dir).parent)
        entries = [{k: v for k, v in e.items() if k != "stat"} for e in info["files"].values()]
        wanted = sorted({str(e["blob"]) for e in entries if e["type"] == "f" and e.get("blob")})
        missing = await node.agent.missing_blobs.remote(wanted) if wanted else []
        if missing and self.blobs is not None:
            blobs = self.blobs
            started = time.monotonic()
            refs, size = await asyncio.to_thread(
                files.pack_named, [(b, blobs.path(b)) for b in missing], blobs.root
            )
            await node.agent.receive_blobs.remote(refs)
            logger.info(
                "sent %d of %d blobs (%d MiB) of a Volume to node %s in %.1f s",
                len(missing),
                len(wanted),
                size >> 20,
                node.node_id[:12],
                time.monotonic() - started,
            )
        return entries

    async def _pull(self, container_id: str, placed: _Placed) -> None:
        """Bring what the container changed in its copies on its node into this machine's
        working copies (only those entries travel)."""
        assert placed.node is not None
        for host_dir, index, read_only in placed.volumes:
            if read_only:
                continue
            changed, deleted, refs = await placed.node.agent.volume_changes.remote(
                container_id, index
            )
            if not changed and not deleted:
                continue
            staging = Path(host_dir).parent / f".pull-{index}"
            try:
                await asyncio.to_thread(files.unpack, refs, staging)
                await asyncio.to_thread(
                    files.apply_changes, staging, Path(host_dir), changed, deleted
                )
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)

    async def before_commit(self, container_id: str) -> None:
        """``vol.commit()`` in a container on a node with copies: bring its writes here first."""
        placed = self._placed.get(container_id)
        if placed is not None and placed.volumes and placed.node is not None:
            await self._pull(container_id, placed)

    async def after_reload(self, container_id: str) -> None:
        """``vol.reload()``: the node's copies take the newest entries, as the working
        copies here just did."""
        placed = self._placed.get(container_id)
        if placed is None or not placed.volumes or placed.node is None:
            return
        for host_dir, index, read_only in placed.volumes:
            entries = await self._send_blobs(placed.node, host_dir)
            await placed.node.agent.update_volume.remote(container_id, index, entries, read_only)

    def _release(self, placed: _Placed) -> None:
        """A container is done with its reservation (a gang's, once its last member is)."""
        if placed.gang:
            entry = self._gangs.get(placed.gang)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._gangs[placed.gang]
        self._remove_pg(placed.pg)

    @staticmethod
    def _remove_pg(pg: Any) -> None:
        from ray.util.placement_group import remove_placement_group

        with contextlib.suppress(Exception):
            remove_placement_group(pg)

    # -- placement ---------------------------------------------------------------------
    def bundle(self, spec: FunctionSpec) -> dict[str, float]:
        """What Ray reserves for one container of ``spec``."""
        cpu, memory = spec.cpu, spec.memory
        out: dict[str, float] = {"CPU": float(cpu[0]) if cpu and cpu[0] else DEFAULT_CPU}
        if memory and memory[0]:
            out["memory"] = float(int(memory[0]) << 20)
        for option in spec.gpu:
            kinds = [g.kind for g in self.gpus.inventory.gpus if gpus.satisfies(option["type"], g)]
            if not kinds:
                continue
            out["GPU"] = float(option.get("count") or 1)
            label = f"accelerator_type:{kinds[0]}"
            if any(label in n.resources for n in self.nodes.values()):
                out[label] = 0.001
            break
        return out

    async def start(
        self,
        container_id: str,
        env: dict[str, str],
        spec: FunctionSpec,
        mounts: Sequence[tuple[str, str, bool]] = (),
    ) -> None:
        from ray.util.placement_group import placement_group

        log = lambda line: self._on_log(container_id, "stderr", f"[build] {line}\n")  # noqa: E731
        built = await image_for(self.builder, spec, log)
        bundle_dir = await self.builder.prepare_bundle(built, lambda line: None)
        wanted = self.bundle(spec)
        gang = json.loads(env["KETCH_CLUSTER_INFO"]) if "KETCH_CLUSTER_INFO" in env else None
        rank = int(env.get("KETCH_CLUSTER_RANK", "0"))
        if gang is not None:
            entry = self._gangs.get(gang["id"])
            if entry is None:  # a bundle per member, on a node each where there are enough
                size = len(gang["ids"])
                strategy = "STRICT_SPREAD" if size <= len(self.nodes) else "SPREAD"
                pg = placement_group([wanted] * size, strategy=strategy, name=gang["id"])
                entry = self._gangs[gang["id"]] = [pg, 0]
            entry[1] += 1
            placed = self._placed[container_id] = _Placed(entry[0], gang=gang["id"])
        else:
            pg = placement_group([wanted], strategy="PACK", name=container_id)
            placed = self._placed[container_id] = _Placed(pg)
        try:
            found = await self._place(container_id, placed, wanted, rank)
            if found is None:  # stopped while it waited for a node: an ordinary end
                self._exited(container_id, "was stopped before a node was found for it")
                return
            node, where = found
            if gang is not None:  # every member's address: the node it runs on
                gang["ips"] = [self.nodes[n].address if n in self.nodes else "" for n in where]
                env = {**env, "KETCH_CLUSTER_INFO": json.dumps(gang)}
            placed.node = node
            node.containers.add(container_id)
            for layer in built.chain:
                await self._ship(node, "layers", layer)
            await self._ship(node, "bundles", bundle_dir.name)
            mounts = list(mounts)
            if not self._shares_files(node):
                spec = await self._ship_mounts(node, spec)
                mounts = await self._copy_volumes(container_id, placed, node, mounts)
            source = self._source(spec, node)
            await node.agent.start.remote(container_id, env, spec, mounts, source)
        except BaseException:
            if self._placed.pop(container_id, None) is not None:
                if placed.node is not None:
                    placed.node.containers.discard(container_id)
                self._release(placed)
            raise

    async def _place(
        self, container_id: str, placed: _Placed, wanted: dict[str, float], index: int = 0
    ) -> tuple[_Node, list[str]] | None:
        """The node Ray reserved bundle ``index`` on, and every bundle's node; None if the
        container was stopped first."""
        from ray.util.placement_group import placement_group_table

        ready = asyncio.ensure_future(placed.pg.ready())
        stop = asyncio.ensure_future(placed.stop.wait())
        started = time.monotonic()
        try:
            done, _ = await asyncio.wait(
                {ready, stop}, timeout=self.placement_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            stop.cancel()
        if stop in done:
            return None
        if ready not in done:
            raise RuntimeError(
                f"no node of the Ray cluster could hold {_describe(wanted)} within "
                f"{self.placement_timeout:.0f} s"
            )
        table = await asyncio.to_thread(placement_group_table, placed.pg)
        where = [table["bundles_to_node_id"][i] for i in sorted(table["bundles_to_node_id"])]
        node_id = where[index]
        node = self.nodes.get(node_id)
        if node is None:
            await self._sync_nodes()
            node = self.nodes.get(node_id)
        if node is None:
            raise RuntimeError(f"Ray placed it on node {node_id[:12]}, which runs no ketch worker")
        logger.info(
            "container %s placed on node %s in %.0f ms",
            container_id,
            node_id[:12],
            (time.monotonic() - started) * 1000,
        )
        return node, where

    async def _ship_mounts(self, node: _Node, spec: FunctionSpec) -> FunctionSpec:
        """``spec`` with its image's ``copy=False`` local paths sent to ``node`` (which does
        not share this machine's files) as copies named by content, once per node."""
        wanted = (spec.image or {}).get("mounts") or []
        if not wanted:
            return spec
        store = self.builder.store.root
        sent = []
        for mount in wanted:
            name, _ = await asyncio.to_thread(
                materialize_mount,
                mount["local_path"],
                tuple(mount.get("ignore") or ()),
                store / "mounts",
                store,
            )
            await self._ship(node, "mounts", name)
            sent.append({**mount, "shipped": name})
        return dataclasses.replace(spec, image={**(spec.image or {}), "mounts": sent})

    async def _ship(self, node: _Node, kind: str, name: str) -> None:
        """Make ``kind/name`` of the image cache exist on ``node`` (once per node)."""
        key = f"{kind}/{name}"
        if key in node.have:
            return
        async with node.locks.setdefault(key, asyncio.Lock()):
            if key in node.have:
                return
            if not await node.agent.has.remote(kind, name):
                started = time.monotonic()
                refs, size = await asyncio.to_thread(
                    files.pack, self.builder.store.root / kind / name
                )
                await node.agent.receive.remote(kind, name, refs)
                logger.info(
                    "sent %s (%d MiB) to node %s in %.1f s",
                    key,
                    size >> 20,
                    node.node_id[:12],
                    time.monotonic() - started,
                )
            node.have.add(key)

    # -- image builds ------------------------------------------------------------------
    async def build_step(
        self, layer: Mapping[str, Any], chain: Sequence[str], cfg: dict[str, Any], log: Log
    ) -> None:
        """Build one layer that runs programs (``Builder.remote``) on a node, and bring it
        into this machine's image cache, from where every node gets it by hash."""
        node = self._build_node(chain)
        log(f"   building on node {node.node_id[:12]} ({node.info.get('hostname', '?')})")
        for layer_hash in chain:
            await self._ship(node, "layers", layer_hash)
        if layer["kind"] == "run_function" and cfg.get("python_version"):
            bundle = await self.builder.bundles.ensure(str(cfg["python_version"]), log)
            await self._ship(node, "bundles", bundle.name)
        ray = _ray()
        build_id = new_id("bs")
        try:
            reply_ref = node.agent.build_layer.remote(build_id, dict(layer), list(chain), cfg)
            offset, done = 0, False
            while not done:
                lines, done = await node.agent.build_log.remote(build_id, offset)
                for line in lines:
                    log(line)
                offset += len(lines)
            reply = await reply_ref
            if reply.get("error"):
                raise StepFailed(reply["error"], reply.get("tail", []))
            layer_hash = layer["hash"]
            refs = await node.agent.send.remote("layers", layer_hash)
        except ray.exceptions.RayError as exc:
            raise StepFailed(
                f"node {node.node_id[:12]} was lost during the step ({type(exc).__name__}); "
                "build again",
                [],
            ) from None
        staging = self.builder.store.new_build_dir(layer_hash)
        try:
            await asyncio.to_thread(files.unpack, refs, staging / "layer")
            self.builder.store.install(staging / "layer", layer_hash)
        finally:
            remove_tree(staging)
        node.have.add(f"layers/{layer_hash}")

    def _build_node(self, chain: Sequence[str]) -> _Node:
        """The node a build step runs on: one that has the layer below it, if any does, and
        of those the one running the fewest containers."""
        if not self.nodes:
            raise StepFailed(f"the Ray cluster at {self.address} has no node ketch can use", [])
        parent = f"layers/{chain[-1]}" if chain else ""
        return min(
            self.nodes.values(),
            key=lambda n: (parent not in n.have, len(n.containers), -n.resources.get("CPU", 0)),
        )

    async def snapshot(self, container_id: str, dest: Path) -> None:
        """``snapshot_filesystem()``: the container's writable layer, from its node."""
        placed = self._placed.get(container_id)
        if placed is None or placed.node is None:
            raise InvalidError(f"container {container_id} is not running")
        refs = await placed.node.agent.snapshot.remote(container_id)
        await asyncio.to_thread(files.unpack, refs, dest)

    @staticmethod
    def _source(spec: FunctionSpec, node: _Node) -> tuple[str, bytes] | None:
        """The app's source for a start on ``node``, which has no other way to it: ``(digest,
        tar)``. A deployed version's files never change, so each node gets them once (then
        ``(digest, b"")``); a running app's are read again for each start, as a folder bound
        in would show its edits."""
        if not spec.root_dir or not spec.module_file or spec.serialized_fn:
            return None
        if spec.source and f"sources/{spec.source['hash']}" in node.have:
            return str(spec.source["hash"]), b""
        data = _source.snapshot(Path(spec.root_dir), spec.module_name, spec.module_file)
        if spec.source:
            node.have.add(f"sources/{spec.source['hash']}")
            return str(spec.source["hash"]), data
        return _source.digest(data), data

    # -- the Worker interface ------------------------------------------------------------
    def terminate(self, container_id: str, grace: float) -> None:
        placed = self._placed.get(container_id)
        if placed is None:
            return
        if placed.node is None:
            placed.stop.set()
        else:
            placed.node.agent.terminate.remote(container_id, grace)

    def kill(self, container_id: str) -> None:
        placed = self._placed.get(container_id)
        if placed is not None and placed.node is not None:
            placed.node.agent.kill.remote(container_id)
        elif placed is not None:
            placed.stop.set()

    async def allow_egress(self, container_id: str, networks: Sequence[str]) -> None:
        placed = self._placed.get(container_id)
        if placed is None or placed.node is None:
            raise InvalidError(f"container {container_id} is not running")
        await placed.node.agent.allow_egress.remote(container_id, list(networks))

    def running(self) -> int:
        return len(self._placed)

    def unenforced(self, spec: FunctionSpec) -> list[str]:
        return []

    @property
    def isolation(self) -> str:
        first = next(iter(self.nodes.values()), None)
        where = f"Ray cluster at {self.address}, {len(self.nodes)} nodes"
        return f"{where}; each: {first.info['isolation']}" if first else where

    def node_rows(self) -> list[dict[str, Any]]:
        rows = []
        for node in self.nodes.values():
            info = node.info
            rows.append(
                {
                    "node_id": node.node_id,
                    "hostname": info["hostname"],
                    "address": node.address,
                    "cpus": node.resources.get("CPU", 0),
                    "memory_mib": int(node.resources.get("memory", 0)) >> 20,
                    "memory_available_mib": info["memory_available_mib"],
                    "gpus": info["gpus"],
                    "containers": sum(1 for c in node.containers if not c.startswith("sb-")),
                    "sandboxes": sum(1 for c in node.containers if c.startswith("sb-")),
                    "max_containers": self.per_node,
                    "runtime": "sandbox (ray)",
                    "health": "ok",
                }
            )
        return rows

    async def refresh(self) -> None:
        """Each node's GPUs as its agent holds them now."""
        nodes = list(self.nodes.values())
        infos = await asyncio.gather(
            *(n.agent.describe.remote() for n in nodes), return_exceptions=True
        )
        for node, info in zip(nodes, infos, strict=True):
            if isinstance(info, dict):
                node.info = info

    async def shutdown(self, grace: float = 5.0) -> None:
        ray = _ray()
        if self._watch is not None:
            self._watch.cancel()
        nodes = list(self.nodes.values())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(
                    *(n.agent.shutdown.remote(grace) for n in nodes), return_exceptions=True
                ),
                grace + 10,
            )
        for node in nodes:
            if node.events is not None:
                node.events.cancel()
            with contextlib.suppress(Exception):
                ray.kill(node.agent)
        self.nodes.clear()
        for placed in self._placed.values():
            self._remove_pg(placed.pg)
        self._placed.clear()
        self._gangs.clear()
        with contextlib.suppress(Exception):
            ray.shutdown()


def _describe(bundle: Mapping[str, float]) -> str:
    parts = []
    for key, value in bundle.items():
        if key == "memory":
            parts.append(f"memory={int(value) >> 20} MiB")
        elif not key.startswith("accelerator_type:"):
            parts.append(f"{key}={value:g}")
        else:
            parts.append(key)
    return ", ".join(parts)
