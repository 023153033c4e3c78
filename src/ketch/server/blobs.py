"""Content-addressed blob store on local disk (payloads above the inline limit)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..exception import NotFoundError


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, blob_id: str) -> Path:
        if not blob_id.startswith("bl-") or not all(ch in "0123456789abcdef" for ch in blob_id[3:]):
            raise NotFoundError(f"no blob {blob_id!r}")
        return self.root / blob_id[3:5] / blob_id[3:]

    def put(self, data: bytes) -> str:
        blob_id = "bl-" + hashlib.sha256(data).hexdigest()
        path = self._path(blob_id)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        return blob_id

    def get(self, blob_id: str) -> bytes:
        path = self._path(blob_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no blob {blob_id!r}") from None
