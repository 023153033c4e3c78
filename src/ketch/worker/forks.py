"""Warm fork templates for the ``sandbox`` runtime: containers forked inside their sandbox.

A container of a function whose template is warm is a fork of the template's
process (:mod:`ketch.guest.zygote`), which makes itself a container (its own
user, mount, pid, ipc and uts namespaces, writable layer, ``/proc``, ``/dev``,
``/tmp``, capabilities, seccomp filter) before any of its code runs. The worker
moves it into the container's cgroup when it checks in, and gives it its token
and ids then; the template holds neither. A start then skips bubblewrap, the
overlay mount and the interpreter's start and imports.

A template is kept per *shape*: what a container's sandbox is made of before its
own state (the image's layers, the ketch bundle, the app's source, the image's
local files, its network and user). Containers with Volume working copies of
their own and sandboxes start fresh, as does everything on a machine without a
user namespace for containers (the forks' setup needs one) or after a template
failed (said once in the log). docs/snapshots.md has the design.

Example::

    templates = ForkTemplates(worker)
    key = shape(spec, built, bundle)
    forked = await templates.spawn(key, container_id, go, spec, built, bundle, cgroup, request)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import socket
import struct
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from .._spec import DEFAULT_EPHEMERAL_DISK_MIB, FunctionSpec
from .._tasks import spawn as spawn_task
from ..exception import ExecutionError
from ..server.nodes import memory_mib
from . import cgroups, isolate, seccomp, userns
from ._template import TemplateProcess
from .local import pump_lines

if TYPE_CHECKING:
    from ..images.builder import BuiltImage
    from .bubblewrap import BubblewrapWorker, _Container

logger = logging.getLogger(__name__)

MAX_TEMPLATES = 8
SPARE_DELAY_S = 0.2
WATCH_S = 5.0
LOW_MEMORY = 0.10  # MemAvailable under this share of MemTotal: templates go
SPAWN = "/.ketch/spawn"  # in the template: the forks' writable layers
MS_SHARED = 1 << 20
IDLE_S = 600.0  # a template without forks for this long goes (its memory back)
CHECK_IN_TIMEOUT_S = 30.0


@dataclass
class Forked:
    """A container forked from a template: its pid on this machine, its output, its end."""

    pid: int
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    exited: asyncio.Future[int | None]
    snapshot: bool = False  # forked from a memory snapshot
    ahead: bool = False  # forked ahead of need (a spare), before its function was known


def eligible(spec: FunctionSpec, env: dict[str, str], mounts: object) -> bool:
    """Whether a container of ``spec`` can be a fork: a function's (not a sandbox's), with
    no Volume working copies of its own to bind in."""
    return not mounts and not env.get("KETCH_SANDBOX")


def _identity(path: str | Path) -> list[int]:
    """Which file ``path`` is now: a template's bind holds the file it was given, so an
    edited (replaced) source file must make a new template."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size]


def shape(spec: FunctionSpec, built: BuiltImage, bundle: Path) -> str:
    """What a template is kept by: everything its sandbox is made of."""
    from .._source import project_sources

    files: list[Any] = []
    if spec.module_file and spec.root_dir and not spec.serialized_fn:
        for name, path in project_sources(Path(spec.root_dir), spec.module_name, spec.module_file):
            files.append([name, _identity(path)])
    for mount in (spec.image or {}).get("mounts", []):
        files.append([mount.get("local_path"), _identity(mount.get("local_path") or "")])
    what = {
        "files": files,
        "chain": list(built.chain),
        "bundle": str(bundle),
        "root": spec.root_dir,
        "module": [spec.module_name, spec.module_file, bool(spec.serialized_fn)],
        "mounts": (spec.image or {}).get("mounts", []),
        "network": not bool(getattr(spec, "block_network", False)),
        "gpu": bool(spec.gpu),  # its template holds the GPU driver's files
        "config": built.config,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


class _NoSnapshot(Exception):
    pass


class _Template:
    """One template sandbox: its container-like setup and the process that forks."""

    def __init__(
        self, key: str, container: _Container, process: TemplateProcess, spawn: Path
    ) -> None:
        self.key = key
        self.container = container
        self.process = process
        self.spawn = spawn  # forks' writable layers are bound here, and show in the template
        self.used = time.monotonic()
        self.snapshot_ms: float | None = None  # what its snapshot took, if it holds one
        self.spare: _Spare | None = None  # a fork made ahead of need, checked in
        self.refilling: asyncio.Future[None] | None = None
        self.base_request: dict[str, Any] | None = None  # a spare's fork request
        self.gpu = False  # its functions have GPUs
        self.live = 0  # its forks running now: it stays while there are any (they die with it)


class ForkTemplates:
    """The worker's templates, by shape; at most :data:`MAX_TEMPLATES`, least recently used out."""

    def __init__(self, worker: BubblewrapWorker) -> None:
        self.worker = worker
        self._templates: OrderedDict[str, _Template] = OrderedDict()
        self._starting: dict[str, asyncio.Future[_Template]] = {}
        self.broken = ""  # why templates are off on this machine
        self._lent: dict[str, Path] = {}
        self._no_snapshot: dict[str, str] = {}  # snapshot key -> why it cannot be taken
        self._watcher: asyncio.Task[None] | None = None
        self._seccomp_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.worker.userns is not None and not self.broken

    async def spawn(
        self,
        key: str,
        container_id: str,
        go: dict[str, Any],
        spec: FunctionSpec,
        built: BuiltImage,
        bundle: Path,
        cgroup: cgroups.ContainerCgroup | None,
        request: dict[str, Any],
        layer: Path | None = None,
        snapshot: dict[str, Any] | None = None,
    ) -> Forked | None:
        """Fork a container from the template of shape ``key`` (started first if need be);
        None where that cannot be done here (the caller starts it fresh). ``layer``: a
        folder (its scratch disk) for its writable layer; None: a tmpfs. ``snapshot``:
        ``{"spec", "params", "env"}`` of a memory snapshot to fork from (made first if
        need be); where it cannot be made the container forks from the plain template."""
        try:
            template = None
            if snapshot is not None:
                template = await self._snapshot(key, spec, built, bundle, snapshot, container_id)
            if template is None:
                template = await self._template(key, spec, built, bundle)
        except Exception as exc:  # noqa: BLE001 - a template that fails turns templates off
            self.broken = f"{type(exc).__name__}: {exc}"
            logger.warning("fork templates are off: %s; containers start fresh", self.broken)
            return None
        template.used = time.monotonic()
        template.live += 1  # held from now: no trim drops it under this start
        if template.key in self._templates:
            self._templates.move_to_end(template.key)
        try:
            if layer is not None:
                request = {**request, "upper": self._lend(template, container_id, layer)}
            if template.base_request is None:  # what a spare of it is forked with
                template.base_request = {k: request.get(k) for k in ("cwd", "user")}
            forked, sock = await self._fork(template, container_id, cgroup, request)
            await _go(sock, go)
            self._started(template, forked)
            return forked
        except (TimeoutError, ExecutionError, OSError) as exc:
            # Before it checked in nothing of the container's own had run: this is ours.
            template.live -= 1
            await self._drop(template.key)
            self.broken = f"{type(exc).__name__}: {exc}"
            logger.warning("fork templates are off: %s; containers start fresh", self.broken)
            return None
        except BaseException:
            template.live -= 1
            raise

    async def _snapshot(
        self,
        shape_key: str,
        spec: FunctionSpec,
        built: BuiltImage,
        bundle: Path,
        snapshot: dict[str, Any],
        container_id: str,
    ) -> _Template | None:
        """The template holding ``snapshot`` (its code imported, its snap hooks run), made
        now if need be, the hooks' output in ``container_id``'s log; None where it cannot
        be taken (said in that log once, with the cause)."""
        key = f"{shape_key}-{_snapshot_digest(snapshot)}"
        if key in self._no_snapshot:
            return None

        async def take(template: _Template) -> None:
            log = self.worker._on_log
            started = time.monotonic()
            timeout = max(float(spec.timeout or 0), 300.0)
            reply, out, err = await template.process.prepare(snapshot, timeout)
            await asyncio.gather(
                pump_lines(out, lambda text: log(container_id, "stdout", text)),
                pump_lines(err, lambda text: log(container_id, "stderr", text)),
            )
            if reply["t"] != "prepared":
                raise _NoSnapshot(str(reply.get("error", "?")))
            template.snapshot_ms = float(reply["ms"])
            log(
                container_id,
                "stderr",
                f"[snapshot] taken in {(time.monotonic() - started):.1f} s (the module's "
                "import and @enter(snap=True) hooks); this function's containers start from it\n",
            )

        try:
            return await self._template(key, spec, built, bundle, take)
        except _NoSnapshot as exc:
            if key in self._no_snapshot:  # said once, by the start that tried
                return None
            self._no_snapshot[key] = str(exc)
            self.worker._on_log(
                container_id,
                "stderr",
                f"[snapshot] not taken: {exc}. This function's containers start without "
                "it (every @enter hook runs in each).\n",
            )
            return None

    async def _template(
        self,
        key: str,
        spec: FunctionSpec,
        built: BuiltImage,
        bundle: Path,
        then: Callable[[_Template], Awaitable[None]] | None = None,
    ) -> _Template:
        if (found := self._templates.get(key)) is not None:
            return found
        if (pending := self._starting.get(key)) is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[_Template] = asyncio.get_running_loop().create_future()
        self._starting[key] = fut
        try:
            template = await self._start(key, spec, built, bundle)
            if then is not None:
                try:
                    await then(template)
                except BaseException:
                    await template.process.close()
                    await self._discard(template)
                    raise
            fut.set_result(template)
            self._templates[key] = template
            if self._watcher is None:
                self._watcher = spawn_task(self._watch(), name="fork templates")
            await self._trim()
            return template
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a waiter may be gone
            raise
        finally:
            self._starting.pop(key, None)

    async def _start(
        self, key: str, spec: FunctionSpec, built: BuiltImage, bundle: Path
    ) -> _Template:
        from .bubblewrap import _Container

        worker = self.worker
        tid = f"tpl-{key}"
        cdir = worker.containers_dir / tid
        container = _Container(tid, cdir, cdir / "merged")
        started = time.monotonic()
        try:
            layer = cdir
            if worker.disks is not None:  # what a snap hook writes is bounded, as a container's
                container.disk_mib = DEFAULT_EPHEMERAL_DISK_MIB
                container.disk = layer = await worker.disks.take(DEFAULT_EPHEMERAL_DISK_MIB)
            if worker.userns is not None:
                container.stage = worker.userns.staging()
                container.merged = container.stage.mount_point()
            await userns.mount_overlay(
                worker.userns, built.lowers, layer / "upper", layer / "work", container.merged
            )
            # The forks' lower layer: the template's root without anything mounted in it.
            lower = container.stage.mount_point() if container.stage else cdir / "lower"
            lower.mkdir(exist_ok=True)
            userns.bind_mount(container.merged, lower, recursive=False)
            userns.makedirs(worker.userns, container.merged, ".ketch/w/proc")
            _witness(container.merged)
            # Where each fork's writable layer (its scratch disk) is bound before it is
            # forked: a shared mount, so what is mounted in it later shows in the template.
            spawn = cdir / "spawn"
            spawn.mkdir(parents=True, exist_ok=True)
            userns.bind_mount(spawn, spawn, recursive=False)
            if isolate.libc().mount(None, os.fsencode(spawn), None, MS_SHARED, None) != 0:
                raise OSError(ctypes.get_errno(), f"make {spawn} shared")
            box, command = worker._command(container, built, bundle, {}, spec)
            box.forking = True
            if spec.gpu:
                worker.bind_template_gpus(box)
            box.bind_ro(lower, "/.ketch/lower")
            box.bind_rw(container.stage.bind(spawn) if container.stage else spawn, SPAWN)
            box.bind_ro(container.host(self._seccomp()), "/.ketch/seccomp.bpf")
            config = {
                "seccomp": "/.ketch/seccomp.bpf",
                "caps": list(isolate.CONTAINER_CAPS.values()),
                "read_only": list(isolate.READ_ONLY_PATHS),
                "masked": list(isolate.MASKED_PATHS),
                "own_network": not box.network,
            }
            box.env["KETCH_ZYGOTE"] = json.dumps(config)
            command = [built.python, "-P", "-m", "ketch.guest.zygote"]
            # Not the first function's limits: it serves every function of its shape.
            container.cgroup = worker.plain_cgroup(tid)
            process = TemplateProcess({}, argv=_launcher(worker, container, box, command))
            await process.start()
        except BaseException:
            await worker._teardown(container)
            raise
        logger.info(
            "fork template %s started in %.0f ms", key[:12], (time.monotonic() - started) * 1000
        )
        template = _Template(key, container, process, spawn)
        template.gpu = bool(spec.gpu)
        return template

    def _seccomp(self) -> Path:
        if self._seccomp_file is None:
            fd, name = tempfile.mkstemp(prefix="seccomp-", suffix=".bpf", dir=self.worker.home)
            with os.fdopen(fd, "wb") as fh:
                fh.write(seccomp.program())
            os.chmod(name, 0o644)
            self._seccomp_file = Path(name)
        return self._seccomp_file

    async def _fork(
        self,
        template: _Template,
        fork_id: str,
        cgroup: cgroups.ContainerCgroup | None,
        request: dict[str, Any],
    ) -> tuple[Forked, socket.socket]:
        """A fork, checked in and in ``cgroup``, waiting for :func:`_go` on the socket."""
        loop = asyncio.get_running_loop()
        asked = time.monotonic()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            _, out, err, exited = await template.process.spawn(
                fork_id, {}, request.get("cwd"), extra=request, fds=[theirs.fileno()]
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        sent = time.monotonic()
        try:
            host_pid = await asyncio.wait_for(_check_in(loop, ours), CHECK_IN_TIMEOUT_S)
            if host_pid is None:
                raise ExecutionError(
                    "the forked container ended before it checked in: " + (await _tail(err))
                )
            joined = time.monotonic()
            if cgroup is not None:  # (a migration waits for the kernel: not on the loop)
                await asyncio.to_thread(cgroup.join, host_pid)
            if request.get("devices"):  # its GPUs' nodes, which no template holds
                await _give_devices(host_pid, [path for path, _ in request["devices"]])
            logger.debug(
                "fork %s: forked in %.1f ms, checked in %.1f ms later, cgroup join %.1f ms",
                fork_id,
                (sent - asked) * 1000,
                (joined - sent) * 1000,
                (time.monotonic() - joined) * 1000,
            )
        except BaseException:
            ours.close()
            raise
        return Forked(host_pid, out, err, exited, template.snapshot_ms is not None), ours

    def _started(self, template: _Template, forked: Forked) -> None:
        """Count a fork that became a container, while it runs."""

        def ended(_: object) -> None:
            template.live -= 1
            template.used = time.monotonic()

        forked.exited.add_done_callback(ended)
        self._refill(template)

    # -- spares: a fork made ahead of need, for the next container of its template ------
    def take_spare(self, key: str, snapshot: dict[str, Any] | None) -> _Spare | None:
        """The ready spare of the template of shape ``key`` (and ``snapshot``), if any."""
        if not self.enabled:
            return None
        if snapshot is not None:
            key = f"{key}-{_snapshot_digest(snapshot)}"
        template = self._templates.get(key)
        if template is None or template.spare is None:
            return None
        spare, template.spare = template.spare, None
        if spare.forked.exited.done():  # it died waiting (its template went, say)
            self.forget_spare(spare)
            return None
        template.live += 1
        template.used = time.monotonic()
        return spare

    async def assign(self, spare: _Spare, container_id: str, go: dict[str, Any]) -> Forked:
        """Make ``spare`` container ``container_id``: its identity, then it runs."""
        if spare.lent in self._lent:
            self._lent[container_id] = self._lent.pop(spare.lent)
        try:
            await _go(spare.sock, go)
        except OSError as exc:
            spare.template.live -= 1
            raise ExecutionError(f"the spare fork went away: {exc}") from exc
        spare.forked.ahead = True
        self._started(spare.template, spare.forked)
        return spare.forked

    def _refill(self, template: _Template) -> None:
        """Fork the template's next spare in the background, unless it has one (or its
        containers have GPUs, which a spare cannot know)."""
        if template.spare is not None or template.refilling is not None or template.gpu:
            return
        if self._templates.get(template.key) is not template:
            return
        template.refilling = asyncio.ensure_future(self._make_spare(template))

    async def _make_spare(self, template: _Template) -> None:
        await asyncio.sleep(SPARE_DELAY_S)  # after the start that used the last one
        spare_id = f"sp-{os.urandom(8).hex()}"
        cgroup, disk = None, None
        try:
            cgroup, disk, request = await self.worker.spare_parts(spare_id, template.base_request)
            if disk is not None:
                request = {**request, "upper": self._lend(template, spare_id, disk)}
            forked, sock = await self._fork(template, spare_id, cgroup, request)
            if self._templates.get(template.key) is not template:
                sock.close()
                raise ExecutionError("its template went")
            template.spare = _Spare(template, spare_id, forked, sock, cgroup, disk)
        except Exception as exc:  # noqa: BLE001 - a spare is an extra: starts fork as they come
            logger.debug("no spare fork for template %s: %s", template.key[:12], exc)
            self._forget_parts(spare_id, cgroup, disk)
        finally:
            template.refilling = None

    def forget_spare(self, spare: _Spare) -> None:
        with contextlib.suppress(OSError):
            spare.sock.close()  # its pid 1 reads the end and exits
        self._forget_parts(spare.lent, spare.cgroup, spare.disk)

    def _forget_parts(
        self, lent: str, cgroup: cgroups.ContainerCgroup | None, disk: Path | None
    ) -> None:
        self.release(lent)
        if cgroup is not None:
            cgroup.kill_all()
            cgroup.remove()
        if disk is not None and self.worker.disks is not None:
            spawn_task(self.worker.disks.release(disk), name=f"release {disk.name}")

    def _lend(self, template: _Template, container_id: str, layer: Path) -> str:
        """Bind ``layer`` into the template's spawn area for the fork; its path there."""
        base = self.worker.userns.base if self.worker.userns is not None else 0
        for name in ("upper", "work"):
            (layer / name).mkdir(exist_ok=True)
            os.chown(layer / name, base, base)  # root of the forks' user namespaces
            os.chmod(layer / name, 0o755)
        target = template.spawn / container_id
        target.mkdir()
        userns.bind_mount(layer, target, recursive=False)
        self._lent[container_id] = target
        return f"{SPAWN}/{container_id}"

    def release(self, container_id: str) -> None:
        """Take back what :meth:`_lend` bound for a container that ended."""
        target = self._lent.pop(container_id, None)
        if target is not None:
            isolate.unmount_sync(target)
            with contextlib.suppress(OSError):
                target.rmdir()

    async def _trim(self) -> None:
        """Drop templates with no running forks: the least recently used beyond
        :data:`MAX_TEMPLATES`, any idle for :data:`IDLE_S`, and, while the machine is
        short of memory, all of them (the cost of each said in the log)."""
        now = time.monotonic()
        idle = [k for k, t in self._templates.items() if t.live == 0]  # oldest first
        over = len(self._templates) - MAX_TEMPLATES
        short = memory_pressure(*memory_mib())
        for key in idle:
            template = self._templates[key]
            if short:
                mib = (
                    (template.container.cgroup.memory_bytes() or 0) >> 20
                    if template.container.cgroup
                    else 0
                )
                retake = (
                    f"; its next container takes the snapshot again ({template.snapshot_ms / 1000:.1f} s)"
                    if template.snapshot_ms is not None
                    else ""
                )
                logger.warning(
                    "fork template %s dropped: the machine is short of memory (%s); %d MiB back%s",
                    key[:12],
                    short,
                    mib,
                    retake,
                )
            if short or over > 0 or now - template.used > IDLE_S:
                over -= 1
                await self._drop(key)

    async def _watch(self) -> None:
        """Trim now and then, so idle templates go (and go under memory pressure) without
        a start to trigger it."""
        while True:
            await asyncio.sleep(WATCH_S)
            with contextlib.suppress(Exception):
                await self._trim()

    async def _drop(self, key: str) -> None:
        template = self._templates.pop(key, None)
        if template is not None:
            await template.process.close()
            await self._discard(template)

    async def _discard(self, template: _Template) -> None:
        if template.refilling is not None:
            template.refilling.cancel()
        if template.spare is not None:
            spare, template.spare = template.spare, None
            self.forget_spare(spare)
        for target in isolate.mount_points(template.spawn)[::-1]:  # the lent ones first
            isolate.unmount_sync(Path(target))
        await self.worker._teardown(template.container)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for key in list(self._templates):
            await self._drop(key)
        if self._seccomp_file is not None:
            with contextlib.suppress(OSError):
                self._seccomp_file.unlink()


@dataclass
class _Spare:
    """A fork made ahead of need: checked in, in a cgroup of its own, waiting for the
    go-ahead that makes it a container (``ForkTemplates.assign``)."""

    template: _Template
    lent: str  # its id: the spawn area's entry, until it is a container's
    forked: Forked
    sock: socket.socket
    cgroup: cgroups.ContainerCgroup | None
    disk: Path | None


def memory_pressure(total_mib: int, available_mib: int) -> str:
    """Why the machine is short of memory for templates, in words ("" when it is not):
    MemAvailable under :data:`LOW_MEMORY` of MemTotal."""
    if not total_mib or available_mib >= total_mib * LOW_MEMORY:
        return ""
    return f"{available_mib} of {total_mib} MiB available"


def _snapshot_digest(snapshot: dict[str, Any]) -> str:
    return hashlib.sha256(msgpack.packb(snapshot, use_bin_type=True)).hexdigest()[:16]


async def _go(sock: socket.socket, go: dict[str, Any]) -> None:
    """The go-ahead (``ketch.guest.zygote._read_go``): the container's identity."""
    body = json.dumps(go).encode()
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock, b"g" + len(body).to_bytes(4, "big") + body
        )
    finally:
        sock.close()


async def _give_devices(pid: int, paths: list[str]) -> None:
    """Bind ``paths`` into the fork's ``/dev`` (:mod:`ketch.worker.devices`)."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ketch.worker.devices",
        str(pid),
        *paths,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise ExecutionError(
            f"could not give the forked container its GPUs: {err.decode(errors='replace')[-500:]}"
        )


async def _check_in(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int | None:
    """The forked container's pid on this machine, from the credentials it sent (the
    kernel translates its pid into ours); None if it went away first."""
    fut: asyncio.Future[int | None] = loop.create_future()

    def readable() -> None:
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = b"", []
        loop.remove_reader(sock.fileno())
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:12])[0]
        if data[:1] == b"r" and logger.isEnabledFor(logging.DEBUG):
            with contextlib.suppress(ValueError):
                marks = json.loads(data[1:])
                steps = ", ".join(
                    f"{name} {(t - marks[i - 1][1]) * 1000:.1f}"
                    for i, (name, t) in enumerate(marks)
                    if i
                )
                logger.debug(
                    "fork %s: %s ms (check-in %.1f ms after)",
                    pid,
                    steps,
                    (time.monotonic() - marks[-1][1]) * 1000,
                )
        if not fut.done():
            fut.set_result(pid if data[:1] == b"r" else None)

    loop.add_reader(sock.fileno(), readable)
    try:
        return await fut
    finally:
        loop.remove_reader(sock.fileno())


async def _tail(reader: asyncio.StreamReader) -> str:
    with contextlib.suppress(asyncio.TimeoutError):
        data = await asyncio.wait_for(reader.read(4000), 2)
        return data.decode(errors="replace").strip()[-1500:]
    return "(no output)"


def _witness(root: Path) -> None:
    """A ``/proc`` the kernel sees mounted (so the forks' user namespaces may mount their
    own), covered by an empty read-only tmpfs so that nothing in the sandbox reaches it."""
    import ctypes

    where = root / ".ketch" / "w"
    lib = isolate.libc()
    flags = 2 | 4 | 8  # nosuid, nodev, noexec
    if lib.mount(b"proc", os.fsencode(where / "proc"), b"proc", flags, None) != 0:
        raise OSError(ctypes.get_errno(), "mount the template's proc witness")
    if lib.mount(b"tmpfs", os.fsencode(where), b"tmpfs", 1 | flags, b"size=0,mode=0") != 0:
        raise OSError(ctypes.get_errno(), "cover the template's proc witness")


def _launcher(
    worker: BubblewrapWorker, container: _Container, box: isolate.Bwrap, command: list[str]
) -> Any:
    """How :class:`TemplateProcess` starts the template: bubblewrap, as a container is."""

    def argv(extra_env: dict[str, str]) -> tuple[list[str], list[int], Any]:
        box.env.update(extra_env)
        args, read_fd = worker.bwrap_argv(box, command, container.cgroup)

        def close() -> None:
            os.close(read_fd)
            box.close()

        return args, [read_fd, *box.pass_fds], close

    return argv
