"""``ketch.Volume`` on the control plane: committed files, commits, and working copies.

A Volume's committed state is a table of entries (files, directories, symlinks)
keyed by path; file contents are blobs in ``KETCH_HOME/volumes/blobs``, named by
their SHA-256, so a node that lacks a blob can pull it (``GET
/volume-blobs/<id>``) and identical files are stored once. Every change (a
container's commit, a client's upload, remove or copy) is one transaction
that bumps the Volume's version: readers see all of it or none of it.
Concurrent commits touching different paths both survive; for one path the
last commit wins.

Containers mount working copies (see ``ketch.worker.volumes``). They are
committed when the container calls ``commit()`` and again when it exits; a
working copy left by a crash of the control plane is committed when it
starts again, so writes made in a container are not lost.

Blobs no entry refers to are deleted by a sweep after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import posixpath
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from sqlalchemy import Column, Float, Index, Integer, String, Table

from .._config import config
from .._serialization import pack
from ..exception import AlreadyExistsError, InvalidError, NotFoundError
from ..worker import isolate, userns
from ..worker import volumes as wc
from ..worker.userns import UserNamespace
from . import objects
from .blobs import CHUNK, BlobStore, receive_blob
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from .api import Api

logger = logging.getLogger(__name__)

GC_GRACE_S = 60.0
GC_EVERY_S = 30.0

volume_files = Table(
    "volume_files",
    metadata,
    Column("object_id", String, primary_key=True),
    Column("path", String, primary_key=True),
    Column("type", String, nullable=False),  # f, d or l
    Column("blob", String),
    Column("target", String),
    Column("size", Integer, nullable=False),
    Column("mode", Integer, nullable=False),
    Column("mtime", Float, nullable=False),
    Index("volume_files_blob", "blob"),
)
volume_versions = Table(
    "volume_versions",
    metadata,
    Column("object_id", String, primary_key=True),
    Column("version", Integer, nullable=False),
)

_COLS = ("path", "type", "blob", "target", "size", "mode", "mtime")
_SELECT_ALL = f"SELECT {', '.join(_COLS)} FROM volume_files WHERE object_id = ? ORDER BY path"
_SELECT_ONE = f"SELECT {', '.join(_COLS)} FROM volume_files WHERE object_id = ? AND path = ?"
# Everything under "p/": paths between "p/" and "p0" ('0' follows '/').
_SELECT_UNDER = f"SELECT {', '.join(_COLS)} FROM volume_files WHERE object_id = ? AND path > ? AND path < ? ORDER BY path"
_UPSERT = (
    f"INSERT INTO volume_files (object_id, {', '.join(_COLS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (object_id, path) DO UPDATE SET type = excluded.type, blob = excluded.blob, "
    "target = excluded.target, size = excluded.size, mode = excluded.mode, mtime = excluded.mtime"
)


def norm(path: Any, allow_root: bool = True) -> str:
    """A path inside a Volume, as stored: relative, ``/``-separated, no ``..``."""
    if not isinstance(path, str) or len(path) > 4096 or "\0" in path:
        raise InvalidError(f"invalid Volume path {path!r}")
    clean = posixpath.normpath("/" + path).lstrip("/")
    if clean in ("", "."):
        if not allow_root:
            raise InvalidError("this needs a path inside the Volume, not its root")
        return ""
    if any(part == ".." for part in path.split("/")):
        raise InvalidError(f"Volume path {path!r} may not contain '..'")
    return clean


def _row(row: tuple[Any, ...]) -> wc.Entry:
    return dict(zip(_COLS, row, strict=True))


def _under(store: Store, object_id: str, path: str) -> list[wc.Entry]:
    if not path:
        return [_row(r) for r in store.db.execute(_SELECT_ALL, (object_id,)).fetchall()]
    rows = store.db.execute(_SELECT_UNDER, (object_id, path + "/", path + "0")).fetchall()
    return [_row(r) for r in rows]


def entry_at(store: Store, object_id: str, path: str) -> wc.Entry | None:
    row = store.db.execute(_SELECT_ONE, (object_id, path)).fetchone()
    return _row(row) if row else None


def head(store: Store, object_id: str) -> list[wc.Entry]:
    return _under(store, object_id, "")


def version(store: Store, object_id: str) -> int:
    row = store.db.execute(
        "SELECT version FROM volume_versions WHERE object_id = ?", (object_id,)
    ).fetchone()
    return int(row[0]) if row else 0


# Without redirect_dir, renaming a directory that came from the lower layer fails with EXDEV.
OVERLAY_OPTIONS = "redirect_dir=on"


class RemoteCopies(Protocol):
    """Copies of working copies on other machines (``ketch.cluster.ray_worker.RayWorker``)."""

    async def before_commit(self, container_id: str) -> None: ...

    async def after_reload(self, container_id: str) -> None: ...


class VolumeService:
    """The control plane's Volumes: blob store, changes, and the working copies of its node."""

    def __init__(self, store: Store, home: Path, blob_root: Path | None = None) -> None:
        self.store = store
        self.blobs = BlobStore((blob_root or home) / "volumes" / "blobs")
        self.blobs.clean_temporaries()
        self.work = home / "volumes" / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self._mounts: dict[
            str, list[tuple[str, Path, bool]]
        ] = {}  # container -> [(volume id, work dir, read-only)]
        self._locks: dict[Path, asyncio.Lock] = {}
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._unreferenced: dict[str, float] = {}  # blob -> when it lost a reference
        self._gc_task: asyncio.Task[None] | None = None
        self._overlays: bool | None = (
            None  # whether working copies can be overlays; found on first use
        )
        # The sandbox runtime's user namespace: overlay copies are then made of idmapped
        # layers, so that its root owns what it finds there (set when the runtime starts).
        self.userns: UserNamespace | None = None
        # On a Ray cluster: containers on nodes that do not share this machine's files
        # work on copies, which ``commit`` and ``reload`` bring back and refresh.
        self.nodes: RemoteCopies | None = None
        objects.PURGE["volume"] = self._purge

    def _purge(self, store: Store, object_id: str) -> None:
        rows = store.db.execute(
            "SELECT blob FROM volume_files WHERE object_id = ? AND blob IS NOT NULL", (object_id,)
        )
        self._forget([r[0] for r in rows.fetchall()])
        store.db.execute("DELETE FROM volume_files WHERE object_id = ?", (object_id,))
        store.db.execute("DELETE FROM volume_versions WHERE object_id = ?", (object_id,))

    # -- changes -------------------------------------------------------------
    def apply(self, object_id: str, changes: dict[str, wc.Entry | None]) -> tuple[int, list[str]]:
        """Apply ``{path: entry or None (delete)}`` in one transaction.

        Returns ``(version, missing)``: if a file's blob is missing (collected
        meanwhile), nothing is applied and ``missing`` names those paths.
        """
        missing = [
            p
            for p, e in changes.items()
            if e and e["type"] == "f" and not self.blobs.exists(e["blob"])
        ]
        if missing:
            return version(self.store, object_id), missing
        db = self.store.db
        dropped: list[str] = []
        # Deletions deepest first (a directory goes after its files), then additions in path order.
        order = sorted((p for p, e in changes.items() if e is None), reverse=True)
        order += sorted(p for p, e in changes.items() if e is not None)
        for path in order:
            entry = changes[path]
            old = entry_at(self.store, object_id, path)
            if entry is None:
                if old is None:
                    continue
                if old["type"] == "d" and _under(self.store, object_id, path):
                    continue  # a file was committed into it meanwhile
                db.execute(
                    "DELETE FROM volume_files WHERE object_id = ? AND path = ?", (object_id, path)
                )
            else:
                self._ensure_parents(object_id, path, entry["mtime"])
                if old is not None and old["type"] == "d" and entry["type"] != "d":
                    for child in _under(self.store, object_id, path):
                        dropped += [child["blob"]] if child["blob"] else []
                    db.execute(
                        "DELETE FROM volume_files WHERE object_id = ? AND path > ? AND path < ?",
                        (object_id, path + "/", path + "0"),
                    )
                db.execute(_UPSERT, (object_id, *(entry[c] for c in _COLS)))
            if (
                old is not None
                and old["blob"]
                and (entry is None or entry.get("blob") != old["blob"])
            ):
                dropped.append(old["blob"])
        new_version = version(self.store, object_id) + 1
        db.execute(
            "INSERT INTO volume_versions (object_id, version) VALUES (?, ?) "
            "ON CONFLICT (object_id) DO UPDATE SET version = excluded.version",
            (object_id, new_version),
        )
        self.store._commit()
        self._forget(dropped)
        return new_version, []

    def _ensure_parents(self, object_id: str, path: str, mtime: float) -> None:
        parent = posixpath.dirname(path)
        while parent:
            old = entry_at(self.store, object_id, parent)
            if old is not None and old["type"] == "d":
                return
            if old is not None and old["blob"]:
                self._forget([old["blob"]])
            entry = {
                "path": parent,
                "type": "d",
                "blob": None,
                "target": None,
                "size": 0,
                "mode": 0o755,
                "mtime": mtime,
            }
            self.store.db.execute(_UPSERT, (object_id, *(entry[c] for c in _COLS)))
            parent = posixpath.dirname(parent)

    def remove(self, object_id: str, path: str, recursive: bool) -> int:
        entry = entry_at(self.store, object_id, path) if path else None
        children = _under(self.store, object_id, path)
        if path and entry is None:
            raise NotFoundError(f"no file or directory {path!r} in the Volume")
        if children and not recursive:
            raise InvalidError(
                f"{path or '/'!r} is a non-empty directory: pass recursive=True (ketch volume rm -r)"
            )
        changes: dict[str, wc.Entry | None] = {c["path"]: None for c in children}
        if path:
            changes[path] = None
        return self.apply(object_id, changes)[0]

    def copy(self, object_id: str, sources: list[str], dest: str, recursive: bool) -> int:
        """Copy entries inside the Volume (no data is copied: blobs are shared)."""
        target = entry_at(self.store, object_id, dest) if dest else {"type": "d"}
        into_dir = len(sources) > 1 or (target is not None and target["type"] == "d")
        changes: dict[str, wc.Entry | None] = {}
        now = time.time()
        for src in sources:
            entry = entry_at(self.store, object_id, src) if src else {"type": "d", "path": ""}
            if entry is None:
                raise NotFoundError(f"no file or directory {src!r} in the Volume")
            base = posixpath.join(dest, posixpath.basename(src)) if into_dir else dest
            if not base:
                raise InvalidError("cannot copy onto the Volume's root")
            if entry["type"] == "d":
                if not recursive:
                    raise InvalidError(
                        f"{src!r} is a directory: pass recursive=True (ketch volume cp -r)"
                    )
                if base == src or base.startswith(src + "/"):
                    raise InvalidError(f"cannot copy {src!r} into itself")
                changes[base] = {**entry, "path": base, "mtime": now}
                for child in _under(self.store, object_id, src):
                    new_path = (
                        base + child["path"][len(src) :]
                        if src
                        else posixpath.join(base, child["path"])
                    )
                    changes[new_path] = {**child, "path": new_path}
            else:
                changes[base] = {**entry, "path": base, "mtime": now}
        return self.apply(object_id, changes)[0]

    def _forget(self, blobs: list[str]) -> None:
        now = time.time()
        for blob in blobs:
            self._unreferenced.setdefault(blob, now)

    async def _collect(self) -> None:
        while True:
            await asyncio.sleep(GC_EVERY_S)
            with contextlib.suppress(Exception):
                await self.collect_garbage(GC_GRACE_S)

    async def collect_garbage(self, grace: float, everything: bool = False) -> int:
        """Delete blobs no entry refers to (those that lost one, or every blob with ``everything``)."""
        now = time.time()
        if everything:
            candidates = await asyncio.to_thread(self.blobs.all_ids)
        else:
            candidates = [b for b, t in self._unreferenced.items() if now - t >= grace]
        removed = 0
        for blob in candidates:
            self._unreferenced.pop(blob, None)
            if self.store.db.execute(
                "SELECT 1 FROM volume_files WHERE blob = ? LIMIT 1", (blob,)
            ).fetchone():
                continue
            if self.blobs.remove(blob, older_than=grace):
                removed += 1
        return removed

    # -- working copies ------------------------------------------------------
    def _lock(self, work: Path) -> asyncio.Lock:
        return self._locks.setdefault(work, asyncio.Lock())

    async def prepare(
        self, container_id: str, mounts: list[dict[str, Any]], enforces_read_only: bool = False
    ) -> list[tuple[str, str, bool]]:
        """Fill a working copy per mount; returns ``[(host directory, mount path, read-only)]``.

        ``enforces_read_only``: the runtime makes read-only mounts read-only, so
        their working copies may be hard links to the blobs (see worker.volumes).
        """
        done: list[tuple[str, str, bool]] = []
        self._mounts[container_id] = []
        for index, mount in enumerate(mounts):
            object_id = objects.check(self.store, str(mount["object_id"]), "volume")
            work = self.work / container_id / str(index)
            work.mkdir(parents=True, exist_ok=True)
            data = work / "data"
            read_only = bool(mount.get("read_only"))
            link = read_only and enforces_read_only
            overlay = not read_only and await self._can_overlay()
            at, state = await self._fill(
                object_id, work / "lower" if overlay else data, link or overlay
            )
            info = {"object_id": object_id, "mount": mount["path"], "version": at, "files": state}
            if read_only:
                info["read_only"] = True  # never committed, not even after a crash
                info["linked"] = link
            if overlay:
                info["overlay"] = True
            await asyncio.to_thread(wc.save_state, work, info)
            if (
                overlay
            ):  # after the state says so: a restart then knows to mount it before committing
                try:
                    await self._mount(work)
                except RuntimeError as exc:  # the probe passed but this mount did not: a plain copy
                    logger.warning("Volume working copy %s is a plain copy: %s", work, exc)
                    at, info["files"] = await self._fill(object_id, data, link=False)
                    info.pop("overlay")
                    info["version"] = at
                    await asyncio.to_thread(wc.save_state, work, info)
                    await asyncio.to_thread(shutil.rmtree, work / "lower", True)
            self._mounts[container_id].append((object_id, work, read_only))
            done.append((str(work / "data"), str(mount["path"]), read_only))
        return done

    async def _fill(self, object_id: str, into: Path, link: bool) -> tuple[int, wc.State]:
        """Fill the empty directory ``into`` with the Volume's committed files; ``(version, state)``."""
        return await self._from_head(
            object_id,
            functools.partial(wc.materialize, into, blob_path=self.blobs.path, link=link),
            retry=functools.partial(shutil.rmtree, into, True),
        )

    async def _from_head(
        self,
        object_id: str,
        fill: Callable[[list[wc.Entry]], wc.State],
        retry: Callable[[], None] = lambda: None,
    ) -> tuple[int, wc.State]:
        """Run ``fill`` (in a thread) on the Volume's committed files; ``(version, state)``.

        A blob collected between reading the head and copying it makes ``fill``
        raise FileNotFoundError; then ``retry`` cleans up and the head is read again.
        """
        for _ in range(3):
            entries, at = head(self.store, object_id), version(self.store, object_id)
            try:
                return at, await asyncio.to_thread(fill, entries)
            except FileNotFoundError:
                await asyncio.to_thread(retry)
        raise NotFoundError(f"Volume {object_id} is missing file contents")

    async def _can_overlay(self) -> bool:
        """Whether read-write working copies can be overlays (root, and a probe mount works)."""
        if self._overlays is None:
            self._overlays = False
            if os.geteuid() == 0 and config.get("volume_overlay"):
                probe = self.work / f".probe-{secrets.token_hex(4)}"
                try:
                    (probe / "lower").mkdir(parents=True)
                    await self._mount(probe)
                    await self._unmount(probe / "data")
                    self._overlays = True
                except (OSError, RuntimeError) as exc:
                    logger.info(
                        "Volume working copies are plain copies: overlayfs is not available (%s)",
                        exc,
                    )
                finally:
                    await asyncio.to_thread(shutil.rmtree, probe, True)
        return self._overlays

    @staticmethod
    async def _unmount(data: Path) -> None:
        """Detach an overlay working copy's mount, if it is mounted."""
        if os.path.ismount(data):
            await isolate.unmount(data)

    async def _mount(self, work: Path) -> None:
        """Mount an overlay working copy's layers at ``work/data`` (again, after a restart)."""
        await userns.mount_overlay(
            self.userns,
            [work / "lower"],
            work / "upper",
            work / "ovl",
            work / "data",
            OVERLAY_OPTIONS,
        )

    def _owner(self, work: Path) -> int | None:
        """Who what the control plane writes in ``work/data`` must belong to (None: host root).

        In an overlay of idmapped layers root of the user namespace, or its
        containers could not change what a reload brought.
        """
        if self.userns is not None and self.userns.owns(work / "data"):
            return self.userns.base
        return None

    async def _ready(self, work: Path, info: dict[str, Any]) -> Path | None:
        """Make sure an overlay working copy is mounted; returns its upper layer (None: not an overlay).

        A machine restart drops the mount while the upper layer keeps the
        container's changes: scanning the empty mount point would commit every
        file as deleted, so it is mounted again first (or the commit fails).
        """
        if not info.get("overlay"):
            return None
        if not os.path.ismount(work / "data"):
            await self._mount(work)
        return work / "upper"

    def _works(self, container_id: str, object_id: str, writable: bool = False) -> list[Path]:
        mounted = [(w, ro) for oid, w, ro in self._mounts.get(container_id, []) if oid == object_id]
        if not mounted:
            raise InvalidError(
                "this container does not mount that Volume: add it to the function's volumes= to commit or reload it"
            )
        works = [w for w, ro in mounted if not (writable and ro)]
        if not works:
            raise InvalidError(
                "this container mounts that Volume read-only (vol.read_only()), so it cannot commit(); "
                "mount it without read_only() to write to it"
            )
        return works

    async def commit(self, container_id: str, object_id: str) -> int:
        at = 0
        works = self._works(container_id, object_id, writable=True)
        if self.nodes is not None:  # its node has copies: bring them here first
            await self.nodes.before_commit(container_id)
        for work in works:
            at = await self._commit_work(work)
        return at

    async def _commit_work(self, work: Path) -> int:
        async with self._lock(work):
            info = await asyncio.to_thread(wc.load_state, work)
            object_id = info["object_id"]
            try:
                objects.check(self.store, object_id, "volume")
            except NotFoundError:
                logger.info("volume %s was deleted; dropping a working copy's changes", object_id)
                return 0
            if info.get("read_only"):
                return version(self.store, object_id)
            state = info["files"]
            upper = await self._ready(work, info)
            for _ in range(3):
                started = time.monotonic()
                changes, after = await asyncio.to_thread(
                    wc.collect, work / "data", state, self.blobs.ingest, upper
                )
                if not changes:
                    return version(self.store, object_id)
                stored = time.monotonic()
                at, missing = self.apply(object_id, changes)
                if not missing:
                    info["files"] = after
                    await asyncio.to_thread(wc.save_state, work, info)
                    logger.debug(
                        "committed %d changes to volume %s: stored in %.3f s, applied in %.3f s",
                        len(changes),
                        object_id,
                        stored - started,
                        time.monotonic() - stored,
                    )
                    return at
                for path in missing:  # collected meanwhile: store those files again
                    state = {p: e for p, e in state.items() if p != path}
            raise NotFoundError("could not commit the Volume: its blobs kept disappearing")

    async def reload(self, container_id: str, object_id: str) -> int:
        at = 0
        for work in self._works(container_id, object_id):
            async with self._lock(work):
                info = await asyncio.to_thread(wc.load_state, work)
                fill = functools.partial(
                    wc.update,
                    work / "data",
                    info["files"],
                    blob_path=self.blobs.path,
                    link=bool(info.get("linked")),
                    upper=await self._ready(work, info),
                    owner=self._owner(work),
                )
                at, info["files"] = await self._from_head(object_id, fill)
                info["version"] = at
                await asyncio.to_thread(wc.save_state, work, info)
        if self.nodes is not None:  # and to its node's copies
            await self.nodes.after_reload(container_id)
        return at

    def release(self, container_id: str) -> None:
        """The container exited: commit its working copies, then delete them."""
        mounts = self._mounts.pop(container_id, None)
        if not mounts:
            return
        self._releasing[container_id] = asyncio.get_running_loop().create_task(
            self._release(container_id, [w for _, w, _ in mounts])
        )

    async def _release(self, container_id: str, works: list[Path]) -> None:
        try:
            for work in works:
                try:
                    await self._commit_work(work)
                except Exception:
                    logger.exception(
                        "committing %s of container %s failed; its copy is kept", work, container_id
                    )
                    continue
                self._locks.pop(work, None)
                await self._unmount(work / "data")
                await asyncio.to_thread(shutil.rmtree, work, True)
            with contextlib.suppress(OSError):
                (self.work / container_id).rmdir()
        finally:
            self._releasing.pop(container_id, None)

    async def settle(self, container_ids: list[str], timeout: float) -> None:
        """Wait (up to ``timeout``) for the exit commits of these containers."""
        tasks = [self._releasing[c] for c in container_ids if c in self._releasing]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def start(self) -> None:
        """Commit working copies left by containers of a previous run, then start the collector."""
        for folder in sorted(self.work.iterdir()) if self.work.exists() else []:
            if folder.name.startswith(".probe-"):  # an overlay probe cut short
                await self._unmount(folder / "data")
                await asyncio.to_thread(shutil.rmtree, folder, True)
                continue
            works = [w for w in sorted(folder.iterdir()) if (w / "state.json").exists()]
            if works:
                logger.info(
                    "committing %d working cop(ies) left by container %s", len(works), folder.name
                )
            await self._release(folder.name, works)
            left = list(folder.iterdir()) if folder.is_dir() else []
            for half in [w for w in left if w not in works]:  # left mid-prepare: nothing to commit
                await self._unmount(half / "data")
                await asyncio.to_thread(shutil.rmtree, half, True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # a copy whose commit failed stays, for the next start
        await self.collect_garbage(GC_GRACE_S, everything=True)
        self._gc_task = asyncio.create_task(self._collect())

    async def close(self) -> None:
        if self._releasing:
            await asyncio.wait(list(self._releasing.values()), timeout=60)
        if self._gc_task is not None:
            self._gc_task.cancel()

    # -- HTTP: blob upload and download --------------------------------------
    async def put_blob(self, request: web.Request) -> web.Response:
        """Stream a request body into a blob; replies ``{"blob_id", "size"}``."""
        blob_id, size = await receive_blob(request.content, self.blobs)
        return web.Response(body=pack({"blob_id": blob_id, "size": size}))

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        try:
            path = self.blobs.existing(request.match_info["blob_id"])
        except NotFoundError as exc:
            return web.Response(
                status=404, body=pack({"error": {"type": "NotFoundError", "message": str(exc)}})
            )
        return web.FileResponse(path, chunk_size=CHUNK)


def _entry_wire(e: wc.Entry) -> dict[str, Any]:
    return {k: e[k] for k in ("path", "type", "size", "mode", "mtime", "target")}


def _service(api: Api) -> VolumeService:
    """The dispatcher's Volumes, as the full service (it sees only what containers need)."""
    svc = api.d.volumes
    if not isinstance(svc, VolumeService):
        raise InvalidError("this control plane has no Volume service")
    return svc


def _volume_id(api: Api, body: dict[str, Any]) -> str:
    return objects.check(api.store, str(body["object_id"]), "volume")


def _container_id(api: Api, body: dict[str, Any]) -> str:
    cid = str(body.get("container_id") or "")
    if not cid or not api.d.container_token_ok(cid, str(body.get("token") or "")):
        raise InvalidError(
            "commit() and reload() work only inside a container that mounts the Volume"
        )
    return cid


@rpc
async def VolumeInfo(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Where this node keeps Volume blobs, for clients on the same machine that can use them."""
    return {"blob_dir": str(_service(api).blobs.root), "boot_id": wc.boot_id()}


@rpc
async def VolumeList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = _volume_id(api, body)
    path = norm(body.get("path", "/"))
    recursive = bool(body.get("recursive"))
    if path:
        entry = entry_at(api.store, object_id, path)
        if entry is None:
            raise NotFoundError(f"no file or directory {path!r} in the Volume")
        if entry["type"] != "d":
            return {"entries": [_entry_wire(entry)]}
    rows = _under(api.store, object_id, path)
    depth = path.count("/") + (1 if path else 0)
    if not recursive:
        rows = [r for r in rows if r["path"].count("/") == depth]
    return {"entries": [_entry_wire(r) for r in rows], "version": version(api.store, object_id)}


@rpc
async def VolumeGetFile(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = _volume_id(api, body)
    path = norm(body.get("path"), allow_root=False)
    entry = entry_at(api.store, object_id, path)
    if entry is None:
        raise NotFoundError(f"no file {path!r} in the Volume")
    if entry["type"] != "f":
        raise InvalidError(
            f"{path!r} is a {'directory' if entry['type'] == 'd' else 'symlink'}, not a file"
        )
    return {
        "blob_id": entry["blob"],
        "size": entry["size"],
        "mode": entry["mode"],
        "mtime": entry["mtime"],
    }


@rpc
async def VolumePutFiles(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Add uploaded files (``{"path", "blob_id", "size", "mode", "mtime"}``) in one commit."""
    object_id = _volume_id(api, body)
    svc = _service(api)
    changes: dict[str, wc.Entry | None] = {}
    for f in body["files"]:
        path = norm(f["path"], allow_root=False)
        if not body.get("force"):
            old = entry_at(api.store, object_id, path)
            if old is not None:
                raise AlreadyExistsError(
                    f"{path!r} already exists in the Volume (use force=True, or `ketch volume put --force`)"
                )
        mode = int(f.get("mode") or 0o644) & 0o7777
        changes[path] = {
            "path": path,
            "type": "f",
            "blob": str(f["blob_id"]),
            "target": None,
            "size": int(f["size"]),
            "mode": mode,
            "mtime": float(f.get("mtime") or time.time()),
        }
    for path in body.get("dirs", []):
        path = norm(path, allow_root=False)
        changes.setdefault(
            path,
            {
                "path": path,
                "type": "d",
                "blob": None,
                "target": None,
                "size": 0,
                "mode": 0o755,
                "mtime": time.time(),
            },
        )
    at, missing = svc.apply(object_id, changes)
    missing_blobs = sorted({str(changes[p]["blob"]) for p in missing if changes[p]})  # type: ignore[index]
    return {"version": at, "missing": missing_blobs}


@rpc
async def VolumeRemove(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = _volume_id(api, body)
    path = norm(body.get("path"))
    return {"version": _service(api).remove(object_id, path, bool(body.get("recursive")))}


@rpc
async def VolumeCopy(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = _volume_id(api, body)
    sources = [norm(p) for p in body["src_paths"]]
    if not sources:
        raise InvalidError("copy_files needs at least one source path")
    dest = norm(body["dst_path"])
    return {"version": _service(api).copy(object_id, sources, dest, bool(body.get("recursive")))}


@rpc
async def VolumeCommit(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = _volume_id(api, body)
    return {"version": await _service(api).commit(_container_id(api, body), object_id)}


@rpc
async def VolumeReload(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = _volume_id(api, body)
    return {"version": await _service(api).reload(_container_id(api, body), object_id)}
