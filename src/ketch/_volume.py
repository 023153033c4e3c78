"""``ketch.Volume``: durable files shared by functions (Modal's ``modal.Volume``).

A Volume is mounted into containers with ``volumes={"/data": vol}``. Writes in
a container become visible to other containers after ``vol.commit()`` in the
writer (also done when the container exits) and ``vol.reload()`` in the
reader. From anywhere, the client methods read and change the committed files.

Example::

    vol = ketch.Volume.from_name("models", create_if_missing=True)

    @app.function(volumes={"/models": vol})
    def train():
        open("/models/weights.bin", "wb").write(b"...")
        vol.commit()

    with vol.batch_upload() as batch:
        batch.put_file("config.json", "/config.json")
    for entry in vol.listdir("/"):
        print(entry.path, entry.size)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import posixpath
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import _sync
from ._client import _Client, reply_error
from ._config import config, in_container
from ._object import _Object, public
from ._serialization import unpack
from .exception import InvalidError, NotFoundError

CHUNK = 4 << 20
WRITE_BATCH = 1 << 20
UPLOAD_CONCURRENCY = 4
Progress = Callable[[int], None]  # called with the number of bytes just moved


class FileEntryType(enum.IntEnum):
    """The kind of a Volume entry (values follow Modal's)."""

    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3


_TYPES = {"f": FileEntryType.FILE, "d": FileEntryType.DIRECTORY, "l": FileEntryType.SYMLINK}


@dataclass(frozen=True)
class FileEntry:
    """One file, directory or symlink in a Volume (``path`` is relative to its root)."""

    path: str
    type: FileEntryType
    mtime: float
    size: int


def _entry(raw: dict[str, Any]) -> FileEntry:
    return FileEntry(raw["path"], _TYPES[raw["type"]], float(raw["mtime"]), int(raw["size"]))


_LOCAL_STORE: dict[str, Any] = {}  # server URL -> BlobStore | None


def _fileno(fileobj: Any) -> int | None:
    """The file descriptor behind ``fileobj``, if it is a regular file (not a pipe, socket or buffer)."""
    try:
        fd = int(fileobj.fileno())
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


def _kernel_copy(src: int, dst: int, progress: Progress | None) -> int:
    """Copy all of ``src`` to ``dst`` at its current offset with ``sendfile`` (no user-space copy)."""
    total = 0
    while sent := os.sendfile(dst, src, total, 64 << 20):
        total += sent
        if progress:
            progress(sent)
    return total


async def _local_store(client: _Client) -> Any:
    """The control plane's Volume blob store, if this process is on its machine and may write it.

    Then files move with the kernel's copy instead of over HTTP; a sandboxed
    container, another user or another machine uses HTTP.
    """
    url = await client.url()
    if url not in _LOCAL_STORE:
        store = None
        if not in_container() and not config.get("volume_http"):
            info = await client.rpc("VolumeInfo", {})
            blob_dir = Path(info["blob_dir"])
            with contextlib.suppress(OSError):
                same_boot = (
                    Path("/proc/sys/kernel/random/boot_id").read_text().strip() == info["boot_id"]
                )
                if same_boot and info["boot_id"] and os.access(blob_dir, os.W_OK | os.X_OK):
                    from .server.blobs import BlobStore

                    store = BlobStore(blob_dir)
        _LOCAL_STORE[url] = store
    return _LOCAL_STORE[url]


async def _upload(
    client: _Client, path: str | Path | None, data: bytes | None, progress: Progress | None
) -> dict[str, Any]:
    """Put a local file (or bytes) into the Volume blob store; returns ``{"blob_id", "size"}``."""
    loop = asyncio.get_running_loop()
    local = await _local_store(client)
    if local is not None:
        if path is not None:
            blob_id, size = await loop.run_in_executor(None, local.ingest, path)
        else:
            assert data is not None
            blob_id, size = await loop.run_in_executor(None, local.put, data), len(data)
        if progress:
            progress(size)
        return {"blob_id": blob_id, "size": size}

    async def chunks() -> AsyncIterator[bytes]:
        if data is not None:
            yield data
            if progress:
                progress(len(data))
            return
        assert path is not None
        fh = await loop.run_in_executor(None, open, path, "rb")
        try:
            while chunk := await loop.run_in_executor(None, fh.read, CHUNK):
                yield chunk
                if progress:
                    progress(len(chunk))
        finally:
            fh.close()

    url = await client.url()
    async with client._ensure_session().put(f"{url}/volume-blobs", data=chunks()) as resp:
        payload = await resp.read()
        if resp.status != 200:
            raise reply_error(payload, "ServerError", f"upload failed: HTTP {resp.status}")
        return dict(unpack(payload))


class _Volume(_Object):
    """A named Volume of files, mounted by functions and readable from anywhere."""

    _kind = "volume"
    _read_only = False

    def read_only(self) -> _Volume:
        """This Volume, to be mounted read-only: ``volumes={"/weights": vol.read_only()}``.

        In the container, writes under the mount fail with ``OSError`` (EROFS),
        ``commit()`` raises ``InvalidError`` and nothing is committed at exit;
        ``reload()`` still brings in newer commits.
        """
        view = type(self)(
            name=self._name, object_id=self._object_id, create_if_missing=self._create_if_missing
        )
        view._read_only = True
        return view

    # -- inside containers ---------------------------------------------------
    def _container(self) -> dict[str, str]:
        cid, token = os.environ.get("KETCH_CONTAINER_ID"), os.environ.get("KETCH_CONTAINER_TOKEN")
        if not cid or not token:
            raise InvalidError(
                "commit() and reload() work inside a container that mounts the Volume; "
                "from a client use batch_upload(), remove_file() or copy_files(), which commit themselves"
            )
        return {"container_id": cid, "token": token}

    async def commit(self) -> None:
        """Make this container's changes to the mounted Volume visible to others (atomically)."""
        await self._rpc("VolumeCommit", self._container(), timeout=3600)

    async def reload(self) -> None:
        """Bring the mounted Volume up to its latest commit (files changed here and not there stay).

        Raises ``InvalidError`` if this process has files of the Volume open, as Modal does.
        """
        body = self._container()
        open_files = await asyncio.get_running_loop().run_in_executor(None, _open_files_under, self)
        if open_files:
            raise InvalidError(
                f"cannot reload the Volume while files in it are open: {', '.join(open_files[:5])}"
            )
        await self._rpc("VolumeReload", body, timeout=3600)

    # -- anywhere --------------------------------------------------------------
    async def listdir(self, path: str = "/", *, recursive: bool = False) -> list[FileEntry]:
        """Entries directly in ``path`` (or everything under it with ``recursive=True``)."""
        reply = await self._rpc("VolumeList", {"path": path, "recursive": recursive})
        return [_entry(e) for e in reply["entries"]]

    async def iterdir(
        self, path: str = "/", *, recursive: bool = False
    ) -> AsyncIterator[FileEntry]:
        for entry in await self.listdir(path, recursive=recursive):
            yield entry

    async def read_file(self, path: str, _progress: Progress | None = None) -> AsyncIterator[bytes]:
        """The file's bytes, streamed in chunks. Example: ``b"".join(vol.read_file("a.txt"))``."""
        client = await _Client.get()
        local = await _local_store(client)
        for attempt in range(3):
            info = await self._rpc("VolumeGetFile", {"path": path})
            if local is not None:
                try:
                    fh = open(local.path(info["blob_id"]), "rb")  # noqa: SIM115
                except FileNotFoundError:
                    continue  # replaced meanwhile: look the file up again
                loop = asyncio.get_running_loop()
                with fh:
                    while chunk := await loop.run_in_executor(None, fh.read, CHUNK):
                        if _progress:
                            _progress(len(chunk))
                        yield chunk
                return
            url = await client.url()
            async with client._ensure_session().get(
                f"{url}/volume-blobs/{info['blob_id']}"
            ) as resp:
                if resp.status == 404 and attempt < 2:
                    continue  # replaced meanwhile: look the file up again
                if resp.status != 200:
                    raise NotFoundError(
                        f"could not read {path!r} from the Volume (HTTP {resp.status})"
                    )
                async for chunk in resp.content.iter_any():
                    if _progress:
                        _progress(len(chunk))
                    yield chunk
                return

    async def read_file_into_fileobj(
        self, path: str, fileobj: IO[bytes], _progress: Progress | None = None
    ) -> int:
        """Write the file into ``fileobj``; returns the number of bytes."""
        loop = asyncio.get_running_loop()
        client = await _Client.get()
        local = await _local_store(client)
        fd = _fileno(fileobj)
        if (
            local is not None and fd is not None
        ):  # a real file on the control plane's machine: the kernel copies
            for _ in range(3):
                info = await self._rpc("VolumeGetFile", {"path": path})
                try:
                    src = open(local.path(info["blob_id"]), "rb")  # noqa: SIM115
                except FileNotFoundError:
                    continue  # replaced meanwhile: look the file up again
                with src:
                    fileobj.flush()
                    return await loop.run_in_executor(
                        None, _kernel_copy, src.fileno(), fd, _progress
                    )
        n = 0
        buf = bytearray()
        async for chunk in self.read_file(path, _progress):
            buf += chunk
            n += len(chunk)
            if len(buf) >= WRITE_BATCH:  # one thread hop per MiB, not per network read
                await loop.run_in_executor(None, fileobj.write, buf)
                buf = bytearray()
        if buf:
            await loop.run_in_executor(None, fileobj.write, buf)
        return n

    async def remove_file(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory with ``recursive=True``."""
        await self._rpc("VolumeRemove", {"path": path, "recursive": recursive})

    async def copy_files(
        self, src_paths: list[str], dst_path: str, *, recursive: bool = False
    ) -> None:
        """Copy files (directories with ``recursive=True``) inside the Volume, without moving data.

        Several sources, or a destination that is a directory, copy *into* it.
        """
        if isinstance(src_paths, str):
            src_paths = [src_paths]
        await self._rpc(
            "VolumeCopy",
            {"src_paths": list(src_paths), "dst_path": dst_path, "recursive": recursive},
        )

    @_sync.context_manager
    @contextlib.asynccontextmanager
    async def batch_upload(
        self, force: bool = False, _progress: Progress | None = None
    ) -> AsyncIterator[_VolumeUpload]:
        """Upload files and directories, committed together when the block ends.

        Example::

            with vol.batch_upload() as batch:
                batch.put_file("local.txt", "/remote.txt")
                batch.put_directory("data/", "/data")
        """
        batch = _VolumeUpload(self, force, _progress)
        yield batch
        await batch._finish()


class _VolumeUpload:
    """Files queued by ``batch_upload``; uploaded and committed when its block ends."""

    def __init__(self, volume: _Volume, force: bool, progress: Progress | None) -> None:
        self._volume = volume
        self._force = force
        self._progress = progress
        self._files: dict[str, tuple[Path | None, bytes | None]] = {}

    async def put_file(
        self, local_file: str | Path | IO[bytes], remote_path: str, mode: int | None = None
    ) -> None:
        """Queue a local file (a path or a readable binary file object) for ``remote_path``."""
        remote = _remote(remote_path)
        if isinstance(local_file, (str, Path)):
            path = Path(local_file)
            if not path.is_file():
                raise FileNotFoundError(f"no local file {local_file}")
            self._files[remote] = (path, None)
        else:
            self._files[remote] = (None, local_file.read())

    async def put_directory(self, local_path: str | Path, remote_path: str) -> None:
        """Queue every file under a local directory, keeping its layout under ``remote_path``."""
        root = Path(local_path)
        if not root.is_dir():
            raise FileNotFoundError(f"no local directory {local_path}")
        base = _remote(remote_path)
        for folder, _dirs, files in os.walk(root):
            for name in files:
                full = Path(folder) / name
                if full.is_file():
                    rel = full.relative_to(root).as_posix()
                    self._files[posixpath.join(base, rel)] = (full, None)

    def total_bytes(self) -> int:
        return sum(
            p.stat().st_size if p is not None else len(d or b"") for p, d in self._files.values()
        )

    async def _finish(self) -> None:
        if not self._files:
            return
        client = await _Client.get()
        await self._volume._resolve()
        if not self._force:  # fail before moving any data
            for remote in self._files:
                with contextlib.suppress(NotFoundError):
                    await self._volume._rpc("VolumeGetFile", {"path": remote})
                    raise FileExistsError(
                        f"{remote!r} already exists in the Volume (batch_upload(force=True) overwrites)"
                    )
        uploaded: dict[str, dict[str, Any]] = {}
        gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

        async def one(remote: str) -> None:
            path, data = self._files[remote]
            async with gate:
                reply = await _upload(client, path, data, self._progress)
            st = path.stat() if path is not None else None
            uploaded[remote] = {
                "path": remote,
                "blob_id": reply["blob_id"],
                "size": reply["size"],
                "mode": stat.S_IMODE(st.st_mode) if st else 0o644,
                "mtime": st.st_mtime if st else time.time(),
            }

        await asyncio.gather(*(one(r) for r in self._files))
        for _ in range(3):
            reply = await self._volume._rpc(
                "VolumePutFiles",
                {"files": list(uploaded.values()), "force": self._force},
                timeout=600,
            )
            missing = set(reply.get("missing") or ())
            if not missing:
                return
            # Collected between upload and commit (another client removed the same content): send again.
            await asyncio.gather(*(one(r) for r, f in uploaded.items() if f["blob_id"] in missing))
        raise NotFoundError("could not commit the upload: its blobs kept disappearing")


def _remote(path: str) -> str:
    if not isinstance(path, str) or not path.strip("/"):
        raise InvalidError(f"a remote path inside the Volume is needed, not {path!r}")
    return posixpath.normpath("/" + path).lstrip("/")


def _open_files_under(volume: _Volume) -> list[str]:
    """Files this process has open under the mount paths of ``volume`` (best effort)."""
    mounts = [m.get("path") for m in _mounted(volume)]
    if not mounts:
        return []
    found = []
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if any(target == m or target.startswith(m.rstrip("/") + "/") for m in mounts if m):
                    found.append(target)
    return found


def _mounted(volume: _Volume) -> list[dict[str, Any]]:
    raw = os.environ.get("KETCH_VOLUMES", "")
    if not raw:
        return []
    import json

    return [
        m
        for m in json.loads(raw)
        if m.get("object_id") == volume._object_id or m.get("name") == volume._name
    ]


Volume: Any = public(_Volume, "Volume")
VolumeUpload: Any = _sync.synchronize_api(_VolumeUpload, "VolumeUpload")
