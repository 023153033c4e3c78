"""Content-addressed blob store on local disk.

Call payloads above the inline limit live in one store; Volume file contents in
another (``KETCH_HOME/volumes/blobs``), so that a Volume's blobs can be
collected without looking at calls. A blob's id is ``bl-`` and a SHA-256 tree
hash of its bytes: the SHA-256 of the SHA-256 digests of its 8 MiB blocks, so
large files hash on every core. A blob is written to a temporary file, flushed
to disk and renamed into place, so a blob that exists is whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import secrets
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..exception import NotFoundError, PayloadTooLargeError

CHUNK = 4 << 20
BLOCK = 8 << 20  # the tree hash's block
# Files are read and written in pieces this small so that the buffer stays in the
# CPU's cache between the read and the write: 1 MiB or 8 MiB pieces made every
# copy about 2x slower on the machines we measured (cp uses 128 KiB too).
IO = 128 << 10
_HASHERS = ThreadPoolExecutor(
    max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="ketch-hash"
)


def tree_id(block_digests: list[bytes]) -> str:
    return "bl-" + hashlib.sha256(b"".join(block_digests)).hexdigest()


def copy_range(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes between open files through one small reused buffer.

    (``copy_file_range`` is no faster here and much slower when the source
    has just been written, as a container's file being committed has.)
    """
    buf = bytearray(IO)
    view = memoryview(buf)
    done = 0
    while done < size:
        n = os.readv(src, [view[: min(IO, size - done)]])
        if n == 0:
            break
        _write_all(dst, view[:n])
        done += n


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


@functools.cache
def _sync_file_range() -> Any:
    """libc's ``sync_file_range``, or None where there is none."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


def _write_back(fd: int, waited: int, start: int, end: int) -> None:
    """Start the disk writing bytes ``[start, end)`` of ``fd`` and wait for ``[waited, start)``.

    A blob is fsynced before it counts as stored; handing it to the disk a block
    at a time overlaps that flush with the copy (about 10-15% faster end to end)
    and keeps a large upload from filling memory with dirty pages. Advisory:
    any failure is left to the final fsync.
    """
    fn = _sync_file_range()
    if fn:
        fn(fd, start, end - start, 2)  # SYNC_FILE_RANGE_WRITE
        if start > waited:
            fn(fd, waited, start - waited, 7)  # WAIT_BEFORE | WRITE | WAIT_AFTER


class BlobWriter:
    """Streams one blob to disk while hashing it: ``write`` chunks, then ``finish``."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._block = hashlib.sha256()
        self._in_block = 0
        self._digests: list[bytes] = []
        self._tmp = store.root / f"tmp-{os.getpid()}-{secrets.token_hex(8)}"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0
        self._queued = 0  # bytes handed to the disk so far
        self._waited = 0  # bytes the disk is known to have written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), BLOCK - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == BLOCK:
                self._digests.append(self._block.digest())
                self._block, self._in_block = hashlib.sha256(), 0
        self._write(memoryview(data))

    def _write(self, view: memoryview) -> None:
        """Write (no hashing) in cache-sized pieces, handing each full block to the disk."""
        for at in range(0, len(view), IO):
            _write_all(self._fd, view[at : at + IO])
        self.size += len(view)
        if self.size - self._queued >= BLOCK:
            _write_back(self._fd, self._waited, self._queued, self.size)
            self._waited, self._queued = self._queued, self.size

    def finish(self) -> str:
        """Make the blob durable and return its id (an existing identical blob is kept)."""
        if self._in_block or not self._digests:
            self._digests.append(self._block.digest())
        return self._finish(tree_id(self._digests))

    def _finish(self, blob_id: str) -> str:
        path = self._store.path(blob_id)
        try:
            if path.exists():
                os.utime(path)  # a fresh reference: the collector's grace period starts again
                return blob_id
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.replace(path)
            return blob_id
        finally:
            self.abort()

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, blob_id: str) -> Path:
        if (
            not isinstance(blob_id, str)
            or len(blob_id) != 67
            or not blob_id.startswith("bl-")
            or not all(ch in "0123456789abcdef" for ch in blob_id[3:])
        ):
            raise NotFoundError(f"no blob {blob_id!r}")
        return self.root / blob_id[3:5] / blob_id[3:]

    def existing(self, blob_id: str) -> Path:
        """The path of a stored blob; NotFoundError if there is none."""
        path = self.path(blob_id)
        if not path.is_file():
            raise NotFoundError(f"no blob {blob_id!r}")
        return path

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).exists()

    def put(self, data: bytes) -> str:
        writer = self.writer()
        writer.write(data)
        return writer.finish()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def ingest(self, source: str | os.PathLike[str] | int) -> tuple[str, int]:
        """Store a local file's contents (a path, or a descriptor open for reading, which
        stays open); returns ``(blob_id, size)``.

        The file is read once, in small pieces that are written to the blob
        straight away. A file of a block or more fills a ring of block buffers
        that other cores hash while this thread reads on, so a file that
        changes meanwhile still gives a blob whose id matches its bytes.
        """
        writer = self.writer()
        try:
            fd = source if isinstance(source, int) else os.open(source, os.O_RDONLY)
            try:
                if os.fstat(fd).st_size < BLOCK:
                    while piece := os.read(fd, IO):
                        writer.write(piece)
                    return writer.finish(), writer.size
                digests = self._copy_hashing(fd, writer)
            finally:
                if fd is not source:
                    os.close(fd)
        except BaseException:
            writer.abort()
            raise
        return writer._finish(tree_id(digests)), writer.size

    @staticmethod
    def _copy_hashing(fd: int, writer: BlobWriter) -> list[bytes]:
        """Copy ``fd`` into ``writer``'s file and return its block digests, hashed on other cores."""
        ring: list[memoryview] = []
        hashing: deque[Future[bytes]] = deque()
        digests: list[bytes] = []
        slots = _HASHERS._max_workers + 2
        try:
            while True:
                if len(hashing) == slots:
                    digests.append(hashing.popleft().result())  # frees the oldest buffer
                if len(ring) < slots:
                    ring.append(memoryview(bytearray(BLOCK)))
                block = ring[(len(digests) + len(hashing)) % slots]
                filled = 0
                while filled < BLOCK and (n := os.readv(fd, [block[filled : filled + IO]])):
                    writer._write(block[filled : filled + n])
                    filled += n
                if filled == 0 and (digests or hashing):
                    break
                hashing.append(_HASHERS.submit(_sha256, block[:filled]))
                if filled < BLOCK:
                    break
            digests.extend(f.result() for f in hashing)
        finally:
            for f in hashing:
                f.cancel()
        return digests

    def get(self, blob_id: str) -> bytes:
        try:
            return self.path(blob_id).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no blob {blob_id!r}") from None

    def remove(self, blob_id: str, older_than: float) -> bool:
        """Delete a blob unless it was written or referenced in the last ``older_than`` seconds."""
        path = self.path(blob_id)
        try:
            if time.time() - path.stat().st_mtime < older_than:
                return False
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    def all_ids(self) -> list[str]:
        return [
            f"bl-{p.name}"
            for d in self.root.iterdir()
            if d.is_dir()
            for p in d.iterdir()
            if len(p.name) == 64
        ]

    def touch(self, blob_ids: Iterable[str]) -> None:
        """Mark blobs as just used (what ``sweep`` keeps longest)."""
        for blob_id in blob_ids:
            with contextlib.suppress(OSError, NotFoundError):
                os.utime(self.path(blob_id))

    def sweep(self, max_bytes: int) -> tuple[int, int]:
        """Bring the store under ``max_bytes`` by deleting its least recently used blobs
        (by mtime; ``touch`` renews it). A blob with another hard link is in use (a
        read-only Volume copy's file) and stays. Returns ``(blobs removed, bytes freed)``.

        For a cache (a cluster node's): a blob gone from it is sent again when needed.
        """
        found = []
        total = 0
        for d in self.root.iterdir():
            if not d.is_dir():
                continue
            for p in d.iterdir():
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                total += st.st_size
                if st.st_nlink == 1:
                    found.append((st.st_mtime, st.st_size, p))
        removed = freed = 0
        for _, size, path in sorted(found):
            if total <= max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                total -= size
                removed += 1
                freed += size
        return removed, freed

    def clean_temporaries(self) -> None:
        """Remove half-written blobs left by a crash."""
        for tmp in self.root.glob("tmp-*"):
            tmp.unlink(missing_ok=True)


async def receive_blob(content: Any, store: BlobStore, limit: int | None = None) -> tuple[str, int]:
    """Stream an HTTP body (``aiohttp.StreamReader``) into a blob: ``(blob_id, size)``.

    Pieces go to disk in ``CHUNK``-sized writes off the event loop, so a large
    upload never sits in memory; over ``limit`` bytes is a PayloadTooLargeError.
    """
    writer = store.writer()
    buf = bytearray()
    try:
        async for chunk in content.iter_any():
            buf += chunk
            if limit is not None and writer.size + len(buf) > limit:
                raise PayloadTooLargeError(f"an upload over the limit of {limit >> 20} MiB")
            if len(buf) >= CHUNK:
                await asyncio.to_thread(writer.write, buf)
                buf = bytearray()
        if buf:
            await asyncio.to_thread(writer.write, buf)
        return await asyncio.to_thread(writer.finish), writer.size
    except BaseException:
        writer.abort()
        raise
