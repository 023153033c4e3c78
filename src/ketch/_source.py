"""The app's source as containers see it, and the snapshot a deploy takes of it.

Containers import the user's module the way Python would locally: the entry
module (or its top package) and the modules and packages beside it
(``project_sources``). An ephemeral app runs the files as they are on disk;
``ketch deploy`` uploads a snapshot of them (a tar, stored as a blob), so a
deployed version keeps running the code it was deployed with, whatever
happens to the files later, and ``ketch app rollback`` brings old code back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}


def project_sources(root: Path, module_name: str, module_file: str) -> list[tuple[str, Path]]:
    """What of the app's directory goes to the container: its ``.py`` files and package dirs.

    Hidden entries and directories without ``__init__.py`` are left out, so a project
    folder's data, virtualenvs and caches stay on the host.
    """
    top = module_name.split(".")[0]
    found: dict[str, Path] = {}
    if "." in module_name:
        found[top] = root / top
    else:
        found[Path(module_file).name] = Path(module_file)
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith((".", "__")) or entry.name in found:
                continue
            if entry.suffix == ".py" and entry.is_file():
                found[entry.name] = entry
            elif entry.is_dir() and (entry / "__init__.py").is_file():
                found[entry.name] = entry
    return sorted(found.items())


def snapshot(root: Path, module_name: str, module_file: str) -> bytes:
    """A deterministic tar of ``project_sources`` (the same files give the same bytes)."""
    files: list[tuple[str, Path]] = []
    for name, path in project_sources(root, module_name, module_file):
        if path.is_file():
            files.append((name, path))
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
            )
            for fname in sorted(filenames):
                if not fname.endswith((".pyc", ".pyo")):  # modules and package data
                    full = Path(dirpath) / fname
                    files.append((str(Path(name) / full.relative_to(path)), full))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in sorted(files):
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
            if buf.tell() > MAX_SNAPSHOT_BYTES:
                from .exception import InvalidError

                raise InvalidError(
                    f"the app's source beside {module_file} is over {MAX_SNAPSHOT_BYTES >> 20} MiB; "
                    "keep data out of the app's packages (use a Volume or Image.add_local_dir)"
                )
    return buf.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def unpack_snapshot(data: bytes, target: Path) -> Path:
    """Extract a snapshot to ``target`` (once; concurrent callers agree on the result)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(staging, filter="data")
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
