"""The machine's layer cache: one directory per built image layer.

``<cache>/layers/<hash>/`` holds ``fs/`` (what the step changed, in overlayfs
form: deletions are whiteouts) and ``meta.json`` (the step, its parent, its
size, and the image configuration as of this layer: env, workdir, user and the
image's Python). A layer appears by an atomic rename of a finished build, so a
reader never sees half of one. ``used`` is touched whenever an image built on
the layer starts a container or is built again, which is what ``prune`` reads.

The cache is shared by every ``KETCH_HOME`` of the machine (it defaults to
``~/.cache/ketch/images``; ``KETCH_IMAGE_CACHE`` moves it), so the Debian base
is made once per machine.

Example::

    store = LayerStore(Path("~/.cache/ketch/images").expanduser())
    if store.has(layer_hash):
        lowers = store.lowers(chain)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..worker.isolate import unmount_sync


@dataclass(frozen=True)
class LayerInfo:
    """A cached layer as ``ketch image list`` shows it."""

    hash: str
    parent: str
    kind: str
    summary: str
    size: int
    created: float
    last_used: float
    config: dict[str, Any]


def dir_size(path: Path) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def remove_tree(path: Path) -> None:
    """Delete ``path`` even if it still has a mount on it (a crashed build's merged dir)."""
    if not path.exists():
        return
    for top, dirs, _files in os.walk(path):
        for name in dirs:
            full = os.path.join(top, name)
            if os.path.ismount(full):
                unmount_sync(Path(full))
    shutil.rmtree(path, ignore_errors=True)


class LayerStore:
    """Finished layers, builds in progress, and the locks that keep builders apart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layers_dir = root / "layers"
        self.tmp_dir = root / "tmp"
        self.locks_dir = root / "locks"
        for path in (self.layers_dir, self.tmp_dir, self.locks_dir):
            path.mkdir(parents=True, exist_ok=True)

    def path(self, layer_hash: str) -> Path:
        return self.layers_dir / layer_hash

    def fs(self, layer_hash: str) -> Path:
        return self.path(layer_hash) / "fs"

    def has(self, layer_hash: str) -> bool:
        return (self.path(layer_hash) / "meta.json").is_file()

    def meta(self, layer_hash: str) -> dict[str, Any]:
        with open(self.path(layer_hash) / "meta.json") as fh:
            data: dict[str, Any] = json.load(fh)
        return data

    def touch(self, layer_hashes: Sequence[str]) -> None:
        now = time.time()
        for layer_hash in layer_hashes:
            with contextlib.suppress(OSError):
                used = self.path(layer_hash) / "used"
                used.touch()
                os.utime(used, (now, now))

    def lowers(self, chain: Sequence[str]) -> list[Path]:
        """Overlay lower dirs for a chain of layer hashes (base first), top first, empty ones left out."""
        return [
            self.fs(h) for h in reversed(chain) if not self.meta(h).get("empty") or h == chain[0]
        ]

    def new_build_dir(self, layer_hash: str) -> Path:
        path = self.tmp_dir / f"{layer_hash[:16]}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, build_dir: Path, layer_hash: str, meta: dict[str, Any]) -> None:
        """Publish ``build_dir/fs`` as layer ``layer_hash``; replaces an older copy (a forced rebuild)."""
        fs = build_dir / "fs"
        meta = {
            **meta,
            "hash": layer_hash,
            "size": dir_size(fs),
            "empty": not any(fs.iterdir()),
            "created": time.time(),
        }
        with open(build_dir / "meta.json", "w") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
        (build_dir / "used").touch()
        for leftover in ("work", "merged", "upper", "job"):
            remove_tree(build_dir / leftover)
        self.install(build_dir, layer_hash)

    def install(self, staging: Path, layer_hash: str) -> None:
        """Publish ``staging`` (a finished layer's folder: ``meta.json``, ``fs/``, made by
        another store's :meth:`commit`) as layer ``layer_hash``, replacing an older copy."""
        meta = json.loads((staging / "meta.json").read_text())
        if meta.get("hash") != layer_hash or not (staging / "fs").is_dir():
            raise ValueError(f"not a copy of layer {layer_hash[:12]}")
        target = self.path(layer_hash)
        if target.exists():
            retired = self.tmp_dir / f"old-{layer_hash[:16]}-{uuid.uuid4().hex[:8]}"
            os.rename(target, retired)
            remove_tree(retired)
        os.rename(staging, target)

    @contextlib.asynccontextmanager
    async def alock(self, key: str) -> AsyncIterator[None]:
        """An exclusive lock on ``key`` across processes (builders sharing the cache)."""
        fh = open(self.locks_dir / f"{key}.lock", "w")  # noqa: SIM115
        try:
            await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fh, fcntl.LOCK_EX)
            yield
        finally:
            fh.close()  # closing drops the lock

    def infos(self) -> list[LayerInfo]:
        out = []
        for entry in sorted(self.layers_dir.iterdir()):
            try:
                meta = self.meta(entry.name)
                used = (entry / "used").stat().st_mtime if (entry / "used").exists() else 0.0
            except (OSError, ValueError):
                continue
            out.append(
                LayerInfo(
                    hash=entry.name,
                    parent=meta.get("parent", ""),
                    kind=meta.get("kind", "?"),
                    summary=meta.get("summary", ""),
                    size=int(meta.get("size", 0)),
                    created=float(meta.get("created", 0)),
                    last_used=used,
                    config=meta.get("config", {}),
                )
            )
        return out

    def remove(self, layer_hash: str) -> list[str]:
        """Delete a layer and every layer built on it; returns the hashes removed."""
        infos = self.infos()
        doomed = {layer_hash} if self.path(layer_hash).exists() else set()
        grew = True
        while grew:
            more = {i.hash for i in infos if i.parent in doomed and i.hash not in doomed}
            doomed |= more
            grew = bool(more)
        for victim in sorted(doomed):
            retired = self.tmp_dir / f"rm-{victim[:16]}-{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(OSError):
                os.rename(self.path(victim), retired)
                remove_tree(retired)
        return sorted(doomed)

    def prune(self, older_than_s: float) -> list[str]:
        """Remove layers unused for ``older_than_s`` seconds (and their children) and stale builds."""
        cutoff = time.time() - older_than_s
        removed: list[str] = []
        for info in self.infos():
            if info.last_used < cutoff and self.path(info.hash).exists():
                removed += self.remove(info.hash)
        for entry in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < time.time() - 3600:
                    remove_tree(entry)
        return sorted(set(removed))

    def resolve(self, prefix: str) -> str | None:
        """The full hash a unique prefix names, or None."""
        matches = [p.name for p in self.layers_dir.iterdir() if p.name.startswith(prefix)]
        return matches[0] if len(matches) == 1 else None
