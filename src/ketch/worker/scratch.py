"""A container's writable layer on a filesystem of its own, so that ``ephemeral_disk`` bounds it.

Each sandbox container's overlay ``upper`` and ``work`` directories live on a
sparse ext4 image, loop-mounted at ``containers/<id>/disk``: a container that
writes more than its ``ephemeral_disk`` gets ``ENOSPC`` and cannot fill the
host's disk. (The kernels we run on have no ext4 or XFS project quotas, which
would have bounded a directory on the host's filesystem for free.)

Formatting an image takes 10-20 ms, so a small pool of images of the default
size is kept ready, formatted off the start path; other sizes are formatted
when asked. Images are sparse: a container pays only for what it writes.

Example::

    disks = ScratchDisks(home / "scratch", default_mib=20480)
    await disks.mount(cdir / "disk", 20480)
    ...
    await disks.unmount(cdir / "disk")
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

POOL_SIZE = 2


@functools.cache
def support() -> str | None:
    """Why scratch disks cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "loop mounts need root"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed (apt-get install e2fsprogs)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing)"
    return None


def format_image(path: Path, size_mib: int) -> None:
    """A sparse, empty ext4 filesystem of ``size_mib`` MiB in ``path``."""
    with open(path, "wb") as fh:
        fh.truncate(size_mib << 20)
    # No journal: a container's writable layer does not outlive a crash anyway.
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard",
         "-m", "0", str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


class ScratchDisks:
    """Loop-mounted ext4 images for containers' writable layers, with a pool of ready ones."""

    def __init__(self, root: Path, default_mib: int, pool_size: int = POOL_SIZE) -> None:
        self.root = root
        self.default_mib = default_mib
        self.pool_size = pool_size
        self.pool_dir = root / "pool"
        self.images_dir = root / "images"
        shutil.rmtree(root, ignore_errors=True)  # images of a crashed run: their mounts are gone
        self.pool_dir.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._filling = False
        self._refill()

    def _refill(self) -> None:
        with self._lock:
            if self._filling or len(list(self.pool_dir.glob("*.img"))) >= self.pool_size:
                return
            self._filling = True
        threading.Thread(target=self._fill, name="ketch-scratch-pool", daemon=True).start()

    def _fill(self) -> None:
        try:
            while len(list(self.pool_dir.glob("*.img"))) < self.pool_size:
                tmp = self.pool_dir / f"{uuid.uuid4().hex}.tmp"
                format_image(tmp, self.default_mib)
                tmp.rename(tmp.with_suffix(".img"))
        except Exception:
            logger.exception("could not format scratch images for the pool")
        finally:
            with self._lock:
                self._filling = False

    def _take(self, size_mib: int, image: Path) -> None:
        """Move a pooled image of the default size to ``image``, or format one there."""
        if size_mib == self.default_mib:
            for ready in self.pool_dir.glob("*.img"):
                with contextlib.suppress(FileNotFoundError):
                    ready.rename(image)
                    return
        format_image(image, size_mib)

    async def mount(self, target: Path, size_mib: int) -> None:
        """Mount a fresh filesystem of ``size_mib`` MiB at ``target`` (nosuid, nodev)."""
        image = self.images_dir / f"{target.parent.name}.img"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._take, size_mib, image)
        self._refill()
        target.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            "mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(target),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            image.unlink(missing_ok=True)
            raise RuntimeError(f"cannot mount a scratch disk: {err.decode(errors='replace').strip()}")
        (target / "lost+found").rmdir()

    async def unmount(self, target: Path) -> None:
        """Unmount ``target`` (lazily: a straggler cannot keep it) and delete its image."""
        proc = await asyncio.create_subprocess_exec(
            "umount", "-l", str(target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await proc.wait()
        (self.images_dir / f"{target.parent.name}.img").unlink(missing_ok=True)

    @staticmethod
    def full(target: Path) -> bool:
        """Whether the filesystem at ``target`` has (next to) no room left."""
        try:
            st = os.statvfs(target)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < max(1 << 20, st.f_blocks * st.f_frsize // 200)
