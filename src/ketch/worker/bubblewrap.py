"""The ``sandbox`` runtime: each container is an isolated bubblewrap sandbox.

A container's root is an overlay of its image's layers with a private writable
layer under ``$KETCH_HOME/containers/<id>/``. Where the node has a user namespace
(:mod:`ketch.worker.userns`), the container runs as its root, which is nobody on
the host: the layers and every host directory bound in are idmapped, and mounted
for bubblewrap under ``/run/ketch``. bubblewrap enters the root with its own
mount, pid, ipc and uts namespaces (and a network namespace with no route out
for ``block_network=True``), Docker's default capabilities and seccomp filter,
runc's read-only and masked kernel paths (:mod:`ketch.worker.isolate`), a fresh
``/dev``, ``/proc`` and ``/tmp``, and only these things from the host, bound in:

* ``/.ketch/bundle`` (read-only): ketch and its runtime dependencies
  (:mod:`ketch.images.bundle`);
* ``/.ketch/run/channel.sock`` and ``/.ketch/run/api.sock``: unix sockets to the
  control plane (the container channel, and the API for calls made from inside:
  its ``containers.sock``, whose peers never count as local for host paths),
  which work without any network;
* the app's source at ``/root`` (the entry module, or its top package), as
  Modal does, and the image's ``copy=False`` local files, read-only;
* for GPU functions, the ``/dev/nvidia*`` nodes of the GPUs it owns and the
  driver's user-space libraries under ``/usr/local/nvidia``.

``memory``/``cpu`` limits and a pids limit are applied with cgroups where the
machine has them; a container killed by its memory limit is reported as such.

Example::

    worker = BubblewrapWorker(on_log, on_exit, home, builder, sockets, gpus)
    await worker.start(container_id, env, spec)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._config import config
from .._image_files import content_digest, local_files
from .._source import project_sources
from .._spec import DEFAULT_EPHEMERAL_DISK_MIB, FunctionSpec
from .._tasks import spawn
from ..exception import ExecutionError, NotFoundError
from ..images.builder import Builder, BuiltImage
from ..images.bundle import DEPS_MOUNT_POINT, MOUNT_POINT
from ..images.layers import remove_tree
from . import cgroups, egress, forks, gpus, isolate, rootless, scratch, userns
from .local import (
    ExitSink,
    LogSink,
    describe_exit,
    limits_asked,
    pump_lines,
    signal_group,
    terminate_all,
)
from .userns import Staging, UserNamespace

logger = logging.getLogger(__name__)

RUN_DIR = "/.ketch/run"
SOURCE_ROOT = "/root"
PIDS_LIMIT = 4096
SNAPSHOT_PARAMS = (
    "KETCH_SNAPSHOT_PARAMS"  # a parameterized class's params (base64), for its snapshot
)
# Docker's: the control plane's own (077, for its files) would make the folders bubblewrap
# creates for mount points (/.ketch/run) closed to an image's USER, and its files private.
CONTAINER_UMASK = 0o022
NVIDIA_LIB = "/usr/local/nvidia/lib64"
NVIDIA_BIN = "/usr/local/nvidia/bin"


def socket_dir(home: Path) -> Path:
    """A short directory for the control plane's unix sockets (paths must stay under 108 bytes)."""
    import hashlib

    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"ketch-{rootless.host_uid()}-{tag}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    # The name is predictable: another user may have made it first, to read or swap
    # our sockets. Use it only if it is our own private directory.
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"{path} is not a private directory of uid {os.geteuid()} (owner uid {st.st_uid}, "
            f"mode {stat.S_IMODE(st.st_mode):o}); refusing to put the control plane's sockets there"
        )
    return path


@dataclass
class _Container:
    container_id: str
    dir: Path
    merged: Path
    pid: int = 0
    exited: Awaitable[int] | None = None
    cgroup: cgroups.ContainerCgroup | None = None
    memory_limit_mib: int | None = None
    disk: Path | None = None  # the scratch disk holding its writable layer (``scratch``)
    disk_mib: int = 0
    stage: Staging | None = None  # its idmapped root and binds, with a user namespace
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    egress: asyncio.subprocess.Process | None = None  # its way out (outbound_cidr_allowlist)

    def host(self, path: str | Path, writable: bool = False) -> Path:
        """A host path to bind in: as it is, or idmapped where the namespace's root reaches it."""
        return self.stage.expose(Path(path), writable) if self.stage is not None else Path(path)


class BubblewrapWorker:
    """Starts, stops and watches sandboxed containers."""

    name = "sandbox"
    enforces_read_only = True  # read-only Volume mounts are --ro-bind

    def __init__(
        self,
        on_log: LogSink,
        on_exit: ExitSink,
        home: Path,
        builder: Builder,
        channel_socket: Path,
        api_socket: Path,
        gpu_allocator: gpus.GpuAllocator,
        userns: UserNamespace | None = None,
        userns_note: str = "",
    ) -> None:
        self._on_log = on_log
        self._on_exit = on_exit
        self.home = home
        self.builder = builder
        self.channel_socket = channel_socket
        self.api_socket = api_socket
        self.gpus = gpu_allocator
        self.userns = userns  # containers run as its root; None: as host root
        self.userns_note = userns_note  # why there is none
        self._sockets_open = False
        self.cgroup_parent = str(config.get("cgroup_parent"))
        # Under cgroup_parent when an administrator delegated it to a rootless account.
        self.cgroups = cgroups.detect(parent=self.cgroup_parent)
        self._containers: dict[str, _Container] = {}
        self._driver_files: list[str] | None = None
        self.containers_dir = home / "containers"
        self.mounts_dir = home / "mounts"
        self._cleanup_leftovers()
        self.disks: scratch.ScratchDisks | None = None
        self.disks_note = ""  # why there are none
        if (why_not := scratch.support()) is None:
            self.disks = scratch.ScratchDisks(home / "scratch", DEFAULT_EPHEMERAL_DISK_MIB)
        else:
            self.disks_note = why_not
            logger.warning(
                "containers' writable layers are not bounded by ephemeral_disk: %s", why_not
            )
        self.containers_cap_mib = self._cap_containers()
        self.forks = forks.ForkTemplates(self)
        self.start_notes: dict[str, str] = {}  # container id -> how it started, how fast
        if not config.get("fork_containers"):
            self.forks.broken = "fork_containers is off"

    def _cap_containers(self) -> int | None:
        """Cap the memory of all containers together (``containers_memory_mb``), so that
        containers without ``memory=`` cannot drive the host, or the control plane, out of it.
        """
        if self.cgroups.version == "none":
            return None
        wanted = int(config.get("containers_memory_mb")) << 20
        cap = wanted or cgroups.default_containers_cap(cgroups.host_memory_bytes())
        problem = cgroups.cap_parent(cap, self.cgroup_parent, self.cgroups)
        if problem:
            logger.warning("containers' memory is not capped together: %s", problem)
            return None
        return cap >> 20

    @property
    def isolation(self) -> str:
        if self.userns is not None:
            users = self.userns.describe()
        elif (mapping := rootless.current()) is not None:
            users = mapping.describe()
        else:
            users = f"no user namespace: root inside is root on the host ({self.userns_note})"
        scoped = landlock_scopes()
        return (
            f"bubblewrap + overlayfs (own mount, pid, ipc and uts namespaces; {users}; {scoped}); "
            + self.cgroups.describe()
        )

    def running(self) -> int:
        return len(self._containers)

    def unenforced(self, spec: FunctionSpec) -> list[str]:
        """What ``spec`` asks that this machine cannot hold (told to the user, never silent)."""
        out = [
            f"the {limit} limit is not enforced here: {self.cgroups.describe()}"
            for limit in limits_asked(spec)
            if limit not in self.cgroups.controllers
        ]
        if spec.ephemeral_disk and self.disks is None:
            out.append(f"ephemeral_disk= is not enforced here: {self.disks_note}")
        return out

    def _cleanup_leftovers(self) -> None:
        """Unmount and delete container dirs a crashed control plane left behind."""
        # Deepest first, by the mount table: a bind of a folder of the same filesystem (a
        # fork template's spawn area) is a mount that os.path.ismount cannot see.
        for point in sorted(isolate.mount_points(self.containers_dir), key=len, reverse=True):
            isolate.unmount_sync(Path(point))
        if self.containers_dir.exists():
            for entry in self.containers_dir.iterdir():
                remove_tree(entry)
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            cgroups.cleanup_stale(self.cgroup_parent, support=self.cgroups)

    # -- start ---------------------------------------------------------------
    async def start(
        self,
        container_id: str,
        env: dict[str, str],
        spec: FunctionSpec,
        mounts: Sequence[tuple[str, str, bool]] = (),
    ) -> None:
        started = time.monotonic()
        built = await self._image(container_id, spec)
        bundle = await self.builder.prepare_bundle(built, lambda line: None)
        if self.forks.enabled and forks.eligible(spec, env, mounts):
            if await self._start_forked(container_id, env, spec, built, bundle):
                return
        env = {k: v for k, v in env.items() if k != SNAPSHOT_PARAMS}
        cdir = self.containers_dir / container_id
        container = _Container(container_id, cdir, cdir / "merged")
        self._containers[container_id] = container
        box: isolate.Bwrap | None = None
        try:
            layer = cdir
            if self.disks is not None:
                container.disk_mib = _ephemeral_disk_mib(spec)
                container.disk = layer = await self.disks.take(container.disk_mib)
            if self.userns is not None:
                container.stage = self.userns.staging()
                container.merged = container.stage.mount_point()
            await userns.mount_overlay(
                self.userns, built.lowers, layer / "upper", layer / "work", container.merged
            )
            box, command = self._command(container, built, bundle, env, spec, mounts)
            container.cgroup, container.memory_limit_mib = self._cgroup(container_id, spec)
            argv, read_fd = self.bwrap_argv(box, command, container.cgroup)
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=(read_fd, *box.pass_fds),  # box.pass_fds: the seccomp filter
                    umask=CONTAINER_UMASK,
                )
            finally:
                os.close(read_fd)
                box.close()
        except BaseException:
            if box is not None:
                box.close()
            self._containers.pop(container_id, None)
            await self._teardown(container)
            raise
        assert process.stdout is not None and process.stderr is not None
        took = (time.monotonic() - started) * 1000
        self.start_notes[container_id] = f"a fresh sandbox in {took:.0f} ms (to its process)"
        container.pid = process.pid
        container.exited = process.wait()
        container.tasks = [
            self._pump(container_id, "stdout", process.stdout),
            self._pump(container_id, "stderr", process.stderr),
        ]
        spawn(self._wait(container), name=f"wait {container_id}")

    def bwrap_argv(
        self, box: isolate.Bwrap, command: list[str], cgroup: cgroups.ContainerCgroup | None
    ) -> tuple[list[str], int]:
        """How to start ``box``: as root of the user namespace, in ``cgroup``, with its
        options in a pipe (the descriptor returned: pass it, then close it), so the
        container's /proc/1/cmdline shows no host paths, environment or tokens."""
        full = box.argv(command)
        split = full.index("--")
        options = b"".join(a.encode() + b"\0" for a in full[1:split])
        if len(options) > 60_000:  # more than a pipe holds unread: pass them plainly
            raise RuntimeError("too many sandbox options for the argument pipe")
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, options)
        finally:
            os.close(write_fd)
        argv = [full[0], "--args", str(read_fd), *full[split:]]
        if self.userns is not None:  # bubblewrap runs as root of the user namespace
            argv = self.userns.enter(argv)
        if cgroup is not None:
            argv = cgroups.join_command(cgroup, argv)
        return argv, read_fd

    async def _start_forked(
        self,
        container_id: str,
        env: dict[str, str],
        spec: FunctionSpec,
        built: BuiltImage,
        bundle: Path,
    ) -> bool:
        """Start the container as a fork of its shape's template (:mod:`ketch.worker.forks`);
        False where that cannot be done here (it then starts fresh)."""
        cdir = self.containers_dir / container_id
        container = _Container(container_id, cdir, cdir / "merged")
        self._containers[container_id] = container
        started = time.monotonic()
        disk = _ephemeral_disk_mib(spec)
        env = {**env, **_sandbox_env(spec)}
        params = env.pop(SNAPSHOT_PARAMS, "")
        snapshot = None
        if spec.memory_snapshot:  # the function's environment (Secrets too), not its ids
            # nor its GPUs: the snap hooks run before a GPU is attached, as in Modal
            ids = (
                "KETCH_CONTAINER_ID",
                "KETCH_CONTAINER_TOKEN",
                "CUDA_VISIBLE_DEVICES",
                "NVIDIA_VISIBLE_DEVICES",
            )
            snapshot = {
                "spec": spec.to_wire(),
                "params": base64.b64decode(params) if params else None,
                "env": {k: v for k, v in env.items() if k not in ids},
            }
        request = {
            "disk_mib": disk,
            "tmp_mib": disk,
            "cwd": str(built.config.get("workdir") or SOURCE_ROOT),
            "user": built.config.get("user"),
        }
        owned = self.gpus.busy().get(container_id) or ()
        devices = [g for g in self.gpus_inventory() if g.index in owned]
        if devices:  # its GPUs: their nodes in its /dev, and only they visible
            request["devices"] = [[p, os.path.isdir(p)] for p in gpus.device_paths(devices)]
            env = {**env, **gpus.visible_devices_env(devices)}
        go = {"env": env, "hostname": f"ketch-{container_id[-8:]}"}
        cdir.mkdir(parents=True, exist_ok=True)
        key = forks.shape(spec, built, bundle)
        # A fork made ahead of need, where one waits: not for GPUs, which it cannot know.
        if disk == DEFAULT_EPHEMERAL_DISK_MIB and not spec.gpu:
            spare = self.forks.take_spare(key, snapshot)
            if spare is not None and await self._from_spare(container, spare, spec, go, started):
                return True
        try:
            if self.disks is not None:  # its writable layer on a disk of its own, as fresh
                container.disk_mib = disk
                container.disk = await self.disks.take(disk)
            container.cgroup, container.memory_limit_mib = self._cgroup(container_id, spec)
            forked = await self.forks.spawn(
                key,
                container_id,
                go,
                spec,
                built,
                bundle,
                container.cgroup,
                request,
                container.disk,
                snapshot,
            )
        except BaseException:
            self._containers.pop(container_id, None)
            await self._teardown(container)
            raise
        if forked is None:
            self._containers.pop(container_id, None)
            await self._teardown(container)
            return False
        return self._forked(container, forked, started)

    async def _from_spare(
        self,
        container: _Container,
        spare: forks._Spare,
        spec: FunctionSpec,
        go: dict[str, Any],
        started: float,
    ) -> bool:
        """Make ``spare`` this container: its limits, its identity, and it runs; False
        (the spare forgotten) where it cannot be."""
        memory, cpu = _limits(spec)
        try:
            if spare.cgroup is not None:
                spare.cgroup.limit(int(memory) << 20 if memory else None, cpu)
            container.cgroup, container.disk = spare.cgroup, spare.disk
            container.disk_mib = DEFAULT_EPHEMERAL_DISK_MIB
            container.memory_limit_mib = int(memory) if memory else None
            forked = await self.forks.assign(spare, container.container_id, go)
        except (cgroups.CgroupError, ExecutionError) as exc:
            logger.debug("spare fork not used for %s: %s", container.container_id, exc)
            self.forks.forget_spare(spare)
            container.cgroup, container.disk = None, None
            return False
        return self._forked(container, forked, started)

    def _forked(self, container: _Container, forked: forks.Forked, started: float) -> bool:
        container_id = container.container_id
        took = (time.monotonic() - started) * 1000
        how = "from its memory snapshot" if forked.snapshot else "forked from its template"
        if forked.ahead:
            how += " (a fork made ahead)"
        self.start_notes[container_id] = f"{how} in {took:.0f} ms"
        logger.info("container %s started %s in %.1f ms", container_id, how, took)
        container.pid = forked.pid
        container.exited = _exit_code(forked.exited)
        container.tasks = [
            self._pump(container_id, "stdout", forked.stdout),
            self._pump(container_id, "stderr", forked.stderr),
        ]
        spawn(self._wait(container), name=f"wait {container_id}")
        return True

    async def _image(self, container_id: str, spec: FunctionSpec) -> BuiltImage:
        log_line = lambda line: self._on_log(container_id, "stderr", f"[build] {line}\n")  # noqa: E731
        return await image_for(self.builder, spec, log_line)

    def _command(
        self,
        container: _Container,
        built: BuiltImage,
        bundle: Path,
        env: dict[str, str],
        spec: FunctionSpec,
        mounts: Sequence[tuple[str, str, bool]] = (),
    ) -> tuple[isolate.Bwrap, list[str]]:
        cfg = built.config
        workdir = str(cfg.get("workdir") or SOURCE_ROOT)
        userns.makedirs(self.userns, container.merged, workdir)
        # The sockets' folder, open to an image's USER (an image built here may hold it as
        # the builder's umask left it).
        userns.makedirs(self.userns, container.merged, RUN_DIR)
        folders = ["/.ketch", RUN_DIR]
        if str(cfg.get("user") or "root") not in ("root", "0", "0:0"):
            userns.makedirs(self.userns, container.merged, SOURCE_ROOT)
            folders.append(SOURCE_ROOT)  # the app's source is there, for the USER to import
        for folder in folders:
            os.chmod(container.merged / folder.lstrip("/"), 0o755)
        box = isolate.Bwrap(
            container.merged,
            network=not bool(getattr(spec, "block_network", False)),
            hostname=f"ketch-{container.container_id[-8:]}",
            cwd=workdir,
            tmp_size_mib=_ephemeral_disk_mib(spec),
        )
        box.bind_ro(container.host(bundle), MOUNT_POINT)
        for name, sock in (("channel.sock", self.channel_socket), ("api.sock", self.api_socket)):
            box.bind_rw(self._socket(container, sock), f"{RUN_DIR}/{name}")
        self._bind_source(box, container, spec)
        for mount in (spec.image or {}).get("mounts", []):
            box.bind_ro(container.host(self._materialize(mount)), mount["remote_path"])
        for host_dir, path, read_only in mounts:  # Volume working copies
            if read_only:
                box.bind_ro(container.host(host_dir), path)
            else:
                box.bind_rw(container.host(host_dir, writable=True), path)
        box.env.update({k: str(v) for k, v in cfg.get("env", {}).items()})
        if cfg.get("path"):
            box.env["PATH"] = str(cfg["path"])
        box.env.update(env)
        box.env.update(_sandbox_env(spec))
        self._bind_gpus(box, container.container_id, env)
        # -P: the app folder (the working directory) must not shadow the standard library
        # for ketch itself (an app file named secrets.py, say).
        return box, isolate.as_user(cfg.get("user"), [built.python, "-P", "-m", "ketch.guest"])

    def _socket(self, container: _Container, path: Path) -> Path:
        """A control plane socket for the container: as it is, or (user namespace) open to
        anyone who reaches it (connecting needs write permission, and root inside is nobody
        to the socket's owner); its directory stays private to host root.
        """
        if container.stage is None:
            return path
        if not self._sockets_open:
            for sock in (self.channel_socket, self.api_socket):
                os.chmod(sock, 0o666)
            self._sockets_open = True
        return container.stage.bind(path)

    def _bind_source(self, box: isolate.Bwrap, container: _Container, spec: FunctionSpec) -> None:
        """The app's source at ``/root``, read-only: the entry module (or its top package) and
        the Python modules and packages beside it, so ``import helpers`` works as it does locally.
        """
        if not spec.module_file or not spec.root_dir or spec.serialized_fn:
            return
        root = Path(spec.root_dir)
        view: Path | None = None  # one idmapped mount of the app's directory serves every entry
        for name, path in project_sources(root, spec.module_name, spec.module_file):
            if container.stage is not None and path.parent == root:
                view = view or container.host(root)
                path = view / path.name
            else:
                path = container.host(path)
            box.bind_ro(path, f"{SOURCE_ROOT}/{name}")

    def _materialize(self, mount: dict[str, Any]) -> Path:
        """What to bind for a ``copy=False`` local path: the path itself, or (ignore rules,
        or a copy sent from the control plane) a read-only copy."""
        if shipped := mount.get("shipped"):  # a copy the control plane sent (another machine)
            if not str(shipped).isalnum():
                raise ValueError(f"bad mount copy name {shipped!r}")
            return self.builder.store.root / "mounts" / str(shipped) / "data"
        local, ignore = mount["local_path"], tuple(mount.get("ignore") or ())
        if not os.path.exists(local):
            raise FileNotFoundError(f"local path {local} for {mount['remote_path']} is gone")
        if os.path.isfile(local) or not ignore:
            return Path(local)
        return materialize_mount(local, ignore, self.mounts_dir, self.home)[1]

    def _bind_gpus(self, box: isolate.Bwrap, container_id: str, env: dict[str, str]) -> None:
        owned = self.gpus.busy().get(container_id)
        if not owned:
            box.env.setdefault("CUDA_VISIBLE_DEVICES", "")
            return
        devices = [g for g in self.gpus_inventory() if g.index in owned]
        self._gpu_files(box, devices)
        box.env.update(gpus.visible_devices_env(devices))

    def bind_template_gpus(self, box: isolate.Bwrap) -> None:
        """A fork template of GPU functions: the driver's files, but no device node (it may
        run the user's snap hooks); each fork is given its own GPUs' nodes
        (:mod:`ketch.worker.devices`). It sees no GPU (CUDA_VISIBLE_DEVICES="")."""
        self._gpu_files(box, list(self.gpus_inventory()), nodes=False)
        box.env["CUDA_VISIBLE_DEVICES"] = ""

    def _gpu_files(self, box: isolate.Bwrap, devices: list[gpus.Gpu], nodes: bool = True) -> None:
        for path in gpus.device_paths(devices) if nodes else ():
            box.bind_dev(path, path)
        if any(not g.fake for g in devices):
            if self._driver_files is None:
                self._driver_files = gpus.driver_files()
            for path in self._driver_files:
                folder = NVIDIA_BIN if "/bin/" in path else NVIDIA_LIB
                box.bind_ro(path, f"{folder}/{os.path.basename(path)}")
            box.env["LD_LIBRARY_PATH"] = ":".join(
                p for p in (NVIDIA_LIB, box.env.get("LD_LIBRARY_PATH", "")) if p
            )
            box.env["PATH"] = f"{box.env.get('PATH', isolate.DEFAULT_PATH)}:{NVIDIA_BIN}"

    def gpus_inventory(self) -> tuple[gpus.Gpu, ...]:
        return self.gpus.inventory.gpus

    async def spare_parts(
        self, spare_id: str, base: dict[str, Any] | None
    ) -> tuple[cgroups.ContainerCgroup | None, Path | None, dict[str, Any]]:
        """What a spare fork is made with (``ketch.worker.forks``): a cgroup without memory
        or CPU limits yet, a scratch disk of the default size, the template's request."""
        cgroup = self.plain_cgroup(spare_id)
        try:
            disk = await self.disks.take(DEFAULT_EPHEMERAL_DISK_MIB) if self.disks else None
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        size = DEFAULT_EPHEMERAL_DISK_MIB
        return cgroup, disk, {**(base or {}), "disk_mib": size, "tmp_mib": size}

    def plain_cgroup(self, name: str) -> cgroups.ContainerCgroup | None:
        """A group with the pids limit alone (a fork template's, a spare's): the node's cap
        on all containers' memory (``containers_memory_mb``) still holds it."""
        if self.cgroups.version == "none":
            return None
        return cgroups.ContainerCgroup.create(
            name, pids_limit=PIDS_LIMIT, support=self.cgroups, parent=self.cgroup_parent
        )

    def _cgroup(
        self, container_id: str, spec: FunctionSpec
    ) -> tuple[cgroups.ContainerCgroup | None, int | None]:
        if self.cgroups.version == "none":
            return None, None
        memory, cpu = _limits(spec)
        cgroup = cgroups.ContainerCgroup.create(
            container_id,
            memory_limit_bytes=int(memory) * 2**20 if memory else None,
            cpu_limit=float(cpu) if cpu else None,
            pids_limit=PIDS_LIMIT,
            support=self.cgroups,
            parent=self.cgroup_parent,
        )
        return cgroup, int(memory) if memory else None

    # -- running -------------------------------------------------------------
    def _pump(
        self, container_id: str, stream: str, reader: asyncio.StreamReader
    ) -> asyncio.Task[None]:
        return pump_lines(reader, lambda text: self._on_log(container_id, stream, text))

    async def _wait(self, container: _Container) -> None:
        assert container.exited is not None
        returncode = await container.exited
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*container.tasks, return_exceptions=True), 2.0)
        reason = describe_exit(returncode)
        if container.cgroup is not None and container.cgroup.oom_killed():
            if container.memory_limit_mib:
                limit = f"limit {container.memory_limit_mib} MiB"
            elif self.containers_cap_mib:
                limit = f"no memory= of its own; all containers together may use {self.containers_cap_mib} MiB"
            else:
                limit = "the machine's"
            reason = f"ran out of memory ({limit}) and was killed"
        elif container.disk is not None and scratch.ScratchDisks.full(container.disk):
            reason += f" (its disk was full: ephemeral_disk={container.disk_mib} MiB)"
        self._containers.pop(container.container_id, None)
        self.start_notes.pop(container.container_id, None)
        await self._teardown(container)
        self._on_exit(container.container_id, reason)

    async def _teardown(self, container: _Container) -> None:
        self.forks.release(container.container_id)
        if container.egress is not None and container.egress.returncode is None:
            container.egress.kill()
            await container.egress.wait()
        if container.cgroup is not None:
            container.cgroup.remove()
        self.gpus.release(container.container_id)
        if container.stage is not None:
            container.stage.close()  # its root and binds
        else:
            await isolate.unmount(container.merged)
        if container.disk is not None and self.disks is not None:
            await self.disks.release(container.disk)
        await asyncio.get_running_loop().run_in_executor(None, remove_tree, container.dir)

    async def allow_egress(self, container_id: str, networks: Sequence[str]) -> None:
        """Give a container with its own network namespace a way out to ``networks`` only
        (:mod:`ketch.worker.egress`); it goes with the container."""
        container = self._containers.get(container_id)
        if container is None or not container.pid:
            raise NotFoundError(f"container {container_id} is not running")
        container.egress = await egress.allow(container.pid, networks)

    def usage(self, container_id: str) -> tuple[float | None, int | None] | None:
        """``(CPU seconds, memory bytes)`` of a running container (its cgroup), or None."""
        container = self._containers.get(container_id)
        if container is None or container.cgroup is None:
            return None
        return container.cgroup.cpu_seconds(), container.cgroup.memory_bytes()

    async def snapshot(self, container_id: str, dest: Path) -> None:
        """Copy what the container has written (its writable layer, in overlayfs form:
        deletions are whiteouts) into ``dest``, as a layer over its image's."""
        container = self._containers.get(container_id)
        if container is None or not container.pid:
            raise NotFoundError(f"container {container_id} is not running")
        upper = (container.disk or container.dir) / "upper"
        # cp -a keeps owners, modes, whiteouts (0/0 devices) and overlayfs's xattrs.
        proc = await asyncio.create_subprocess_exec(
            "cp", "-a", f"{upper}/.", str(dest), stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"could not copy the container's files: {err.decode()[-500:]}")
        await asyncio.to_thread(remove_tree, dest / ".ketch")  # ketch's own mount points
        if self.userns is not None:
            await asyncio.to_thread(userns.restore_ids, dest)
        await asyncio.to_thread(drop_privileges, dest)

    def terminate(self, container_id: str, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds if it is still there."""
        container = self._containers.get(container_id)
        if container is None or not container.pid:
            return
        self._signal(container, signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self.kill, container_id)

    def kill(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is not None and container.pid:
            self._signal(container, signal.SIGKILL)
            if container.cgroup is not None:
                container.cgroup.kill_all()

    @staticmethod
    def _signal(container: _Container, sig: int) -> None:
        signal_group(container.pid, sig)

    async def shutdown(self, grace: float = 5.0) -> None:
        await terminate_all(self._containers, self.terminate, grace)
        await self.forks.close()
        if self.disks is not None:
            self.disks.close()


async def image_for(builder: Builder, spec: FunctionSpec, log: Callable[[str], None]) -> BuiltImage:
    """The image ``spec`` runs in, built first if a layer is missing (``log`` hears the build)."""
    from ..image import default_image

    wire = spec.image or default_image().to_wire()
    built = builder.cached(wire)
    if built is None:
        built = await builder.build(wire, log=log)
    builder.store.touch(built.chain)
    return built


def materialize_mount(
    local: str, ignore: tuple[str, ...], into: Path, scratch: Path
) -> tuple[str, Path]:
    """A copy of a ``copy=False`` local path, ignore rules applied, named by its content:
    ``(name, into/name/data)``. Made once per content (staged in ``scratch``, then renamed)."""
    if not os.path.lexists(local):
        raise FileNotFoundError(f"local path {local} is gone")
    entries = local_files(local, ignore)
    name = content_digest(entries).split(":")[-1][:32]
    target = into / name
    if not (target / "data").exists():
        into.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=scratch, prefix=".mount-"))
        data = staging / "data"
        if entries == [("", local)]:  # one file
            shutil.copy2(local, data)
        else:
            data.mkdir()
            for rel, path in entries:
                dest = data / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if os.path.islink(path):
                    os.symlink(os.readlink(path), dest)
                else:
                    shutil.copy2(path, dest)
        if target.exists():  # an older cache's layout
            remove_tree(target)
        try:
            os.rename(staging, target)
        except OSError:  # another start made it first
            remove_tree(staging)
    return name, target / "data"


def _limits(spec: FunctionSpec) -> tuple[float | None, float | None]:
    """The container's memory limit (MiB) and CPU limit (cores) that ``spec`` asks for."""
    memory = spec.memory[1] if spec.memory and spec.memory[1] else None
    cpu = spec.cpu[1] if spec.cpu and spec.cpu[1] else None
    return memory, cpu


def _sandbox_env(spec: FunctionSpec) -> dict[str, str]:
    """What a sandbox container's environment says whatever the control plane's does."""
    return {
        "PYTHONPATH": MOUNT_POINT,
        "PYTHONUNBUFFERED": "1",
        "KETCH_BUNDLE_DEPS": DEPS_MOUNT_POINT,
        "KETCH_CHANNEL": f"unix:{RUN_DIR}/channel.sock",
        "KETCH_SERVER_URL": f"unix:{RUN_DIR}/api.sock",
        "KETCH_SOURCE_ROOT": SOURCE_ROOT,
        "KETCH_PARENT_PID": "",
        "KETCH_RUNTIME": "sandbox",
        "KETCH_EPHEMERAL_DISK_MIB": str(_ephemeral_disk_mib(spec)),
    }


async def _exit_code(exited: Awaitable[int | None]) -> int:
    """A forked container's exit status; killed, if its template went first."""
    code = await exited
    return -signal.SIGKILL if code is None else code


def drop_privileges(root: Path) -> None:
    """Take set-user-ID, set-group-ID and file capabilities off the regular files under
    ``root``: a snapshot holds what untrusted code wrote, as the container's root, and it
    lands in the host's image cache, where such a file would be the host's root's."""
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                if "security.capability" in os.listxattr(path):
                    os.removexattr(path, "security.capability")


@functools.cache
def landlock_scopes() -> str:
    """Whether containers' Landlock scopes hold on this kernel (ketch.guest applies them), in words."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ketch.guest.landlock import confine_container as s; print(s())",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    why_not = done.stdout.strip() if done.returncode == 0 else done.stderr.strip()[-200:]
    if why_not:
        return f"no Landlock scopes: {why_not}"
    return "Landlock: no files, abstract unix sockets or signals outside the container"


def _ephemeral_disk_mib(spec: FunctionSpec) -> int:
    """A container's bound, in MiB, on its writable layer and (separately) its /tmp."""
    return int(getattr(spec, "ephemeral_disk", None) or DEFAULT_EPHEMERAL_DISK_MIB)
