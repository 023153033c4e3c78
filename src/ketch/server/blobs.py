"""Content-addressed blob store on local disk.

Call payloads above the inline limit live in one store; Volume file contents in
another (``KETCH_HOME/volumes/blobs``), so that a Volume's blobs can be
collected without looking at calls. A blob's id is ``bl-`` and the SHA-256 of
its bytes; a blob is written to a temporary file, flushed to disk and renamed
into place, so a blob that exists is whole.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from ..exception import NotFoundError

CHUNK = 4 << 20


class BlobWriter:
    """Streams one blob to disk while hashing it: ``write`` chunks, then ``finish``."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self._tmp = store.root / f"tmp-{os.getpid()}-{secrets.token_hex(8)}"
        self._fh: Any = self._tmp.open("wb")
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._fh.write(data)
        self.size += len(data)

    def finish(self) -> str:
        """Make the blob durable and return its id (an existing identical blob is kept)."""
        blob_id = "bl-" + self._hash.hexdigest()
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
        """Store a local file's contents; returns ``(blob_id, size)``. Reads it once."""
        writer = self.writer()
        try:
            with open(source, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.finish(), writer.size

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
