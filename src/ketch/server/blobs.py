"""Content-addressed blob store on local disk.

Call payloads above the inline limit live in one store; Volume file contents in
another (``KETCH_HOME/volumes/blobs``), so that a Volume's blobs can be
collected without looking at calls. A blob's id is ``bl-`` and a SHA-256 tree
hash of its bytes: the SHA-256 of the SHA-256 digests of its 8 MiB blocks, so
large files hash on every core. A blob is written to a temporary file, flushed
to disk and renamed into place, so a blob that exists is whole.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..exception import NotFoundError

CHUNK = 4 << 20
BLOCK = 8 << 20  # the tree hash's block
_HASHERS = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="ketch-hash")


def tree_id(block_digests: list[bytes]) -> str:
    return "bl-" + hashlib.sha256(b"".join(block_digests)).hexdigest()


def copy_range(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes between open files through one reused buffer.

    (``copy_file_range`` is no faster here and much slower when the source
    has just been written, as a container's file being committed has.)
    """
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    done = 0
    while done < size:
        n = os.readv(src, [view[: min(BLOCK, size - done)]])
        if n == 0:
            break
        _write_all(dst, view[:n])
        done += n


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class BlobWriter:
    """Streams one blob to disk while hashing it: ``write`` chunks, then ``finish``."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._block = hashlib.sha256()
        self._in_block = 0
        self._digests: list[bytes] = []
        self._tmp = store.root / f"tmp-{os.getpid()}-{secrets.token_hex(8)}"
        self._fh: Any = self._tmp.open("wb")
        self.size = 0

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
        self._fh.write(data)
        self.size += len(data)

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
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.replace(path)
            return blob_id
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
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

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).exists()

    def put(self, data: bytes) -> str:
        writer = self.writer()
        writer.write(data)
        return writer.finish()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def ingest(self, source: str | os.PathLike[str]) -> tuple[str, int]:
        """Store a local file's contents; returns ``(blob_id, size)``.

        The file is read once: each block is written to the blob and hashed
        (on other cores) from the same buffer, so a file that changes
        meanwhile still gives a blob whose id matches its bytes.
        """
        writer = self.writer()
        pending: list[Any] = []
        room = threading.Semaphore(2 * _HASHERS._max_workers)
        size = 0

        def digest(block: bytes) -> bytes:
            try:
                return hashlib.sha256(block).digest()
            finally:
                room.release()

        try:
            with open(source, "rb") as fh:
                while block := fh.read(BLOCK):
                    room.acquire()
                    pending.append(_HASHERS.submit(digest, block))
                    writer._fh.write(block)
                    size += len(block)
            digests = [f.result() for f in pending] or [hashlib.sha256(b"").digest()]
        except BaseException:
            writer.abort()
            raise
        writer.size = size
        return writer._finish(tree_id(digests)), size

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
        return [f"bl-{p.name}" for d in self.root.iterdir() if d.is_dir() for p in d.iterdir() if len(p.name) == 64]

    def clean_temporaries(self) -> None:
        """Remove half-written blobs left by a crash."""
        for tmp in self.root.glob("tmp-*"):
            tmp.unlink(missing_ok=True)
