"""A container's writable layer on a filesystem of its own, so that ``ephemeral_disk`` bounds it.

Each sandbox container's overlay ``upper`` and ``work`` directories live on a
sparse ext4 image, loop-mounted (``nosuid,nodev``): a container that writes
more than its ``ephemeral_disk`` gets ``ENOSPC`` and cannot fill the host's
disk. (The kernels we run on have no ext4 or XFS project quotas, which would
have bounded a directory on the host's filesystem for free.)

Formatting and mounting an image take 15-25 ms, so a small pool of images of
the default size is kept formatted and mounted, off the start path; a
container takes one as it is. Other sizes are made when asked. Images are
sparse: a container pays only for what it writes.

Example::

    disks = ScratchDisks(home / "scratch", default_mib=20480)
    disk = await disks.take(20480)      # a mounted, empty filesystem
    ...
    await disks.release(disk)           # unmounted and deleted
    disks.close()                       # the pool's, at shutdown
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
import time
import uuid
from pathlib import Path

from . import rootless

logger = logging.getLogger(__name__)

POOL_SIZE = 2
# After a container takes a disk, wait this long before making its replacement: on a
# small machine mkfs would otherwise compete with the container's own start for the CPU.
REFILL_DELAY_S = 1.0


@functools.cache
def support() -> str | None:
    """Why scratch disks cannot be used here, or None when they can."""
    if os.geteuid() != 0 or rootless.current() is not None:
        return "loop mounts need root on the host (this control plane is rootless)"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed (apt-get install e2fsprogs)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing)"
    return None


def make_disk(image: Path, mount_point: Path, size_mib: int) -> None:
    """Format a sparse ext4 image of ``size_mib`` MiB and mount it at ``mount_point``."""
    with open(image, "wb") as fh:
        fh.truncate(size_mib << 20)
    try:
        # No journal: a container's writable layer does not outlive a crash anyway.
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-E",
                "lazy_itable_init=1,nodiscard",
                "-m",
                "0",
                str(image),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(mount_point)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as exc:
        image.unlink(missing_ok=True)
        raise RuntimeError(
            f"cannot make a scratch disk: {exc.stderr.decode(errors='replace').strip()}"
        ) from None
    except BaseException:
        image.unlink(missing_ok=True)
        raise
    (mount_point / "lost+found").rmdir()


def _unmount(mount_point: Path) -> None:
    # Lazily: a straggler cannot keep it; the loop device goes with the last user.
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=60)


class ScratchDisks:
    """Loop-mounted ext4 disks for containers' writable layers, with a pool of mounted ones."""

    def __init__(self, root: Path, default_mib: int, pool_size: int = POOL_SIZE) -> None:
        self.root = root
        self.default_mib = default_mib
        self.pool_size = pool_size
        self.images = root / "images"  # <name>.img
        self.disks = root / "disks"  # <name>/: where <name>.img is mounted
        self._clean()
        self.images.mkdir(parents=True, exist_ok=True)
        self.disks.mkdir(parents=True, exist_ok=True)
        self._ready: list[Path] = []
        self._lock = threading.Lock()
        self._filling = False
        self._filler: threading.Thread | None = None
        self._closed = False
        self._refill()

    def _clean(self) -> None:
        """Unmount and delete what a crashed control plane left here."""
        if self.disks.is_dir():
            for entry in self.disks.iterdir():
                if os.path.ismount(entry):
                    _unmount(entry)
        shutil.rmtree(self.root, ignore_errors=True)

    def _new(self, size_mib: int) -> Path:
        name = uuid.uuid4().hex
        disk = self.disks / name
        make_disk(self.images / f"{name}.img", disk, size_mib)
        return disk

    def _refill(self, delay: float = 0.0) -> None:
        with self._lock:
            if self._filling or self._closed or len(self._ready) >= self.pool_size:
                return
            self._filling = True
            self._filler = threading.Thread(
                target=self._fill, args=(delay,), name="ketch-scratch-pool", daemon=True
            )
        self._filler.start()

    def _fill(self, delay: float) -> None:
        try:
            time.sleep(delay)
            while True:
                with self._lock:
                    if self._closed or len(self._ready) >= self.pool_size:
                        return
                disk = self._new(self.default_mib)
                with self._lock:
                    if self._closed:
                        self._remove(disk)
                        return
                    self._ready.append(disk)
        except Exception:
            logger.exception("could not make scratch disks for the pool")
        finally:
            with self._lock:
                self._filling = False

    async def take(self, size_mib: int) -> Path:
        """A mounted, empty filesystem of ``size_mib`` MiB for one container."""
        disk = None
        if size_mib == self.default_mib:
            with self._lock:
                disk = self._ready.pop() if self._ready else None
        if disk is None:
            disk = await asyncio.get_running_loop().run_in_executor(None, self._new, size_mib)
        self._refill(REFILL_DELAY_S)
        return disk

    def _remove(self, disk: Path) -> None:
        _unmount(disk)
        (self.images / f"{disk.name}.img").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            disk.rmdir()

    async def release(self, disk: Path) -> None:
        """Unmount ``disk`` and delete its image."""
        await asyncio.get_running_loop().run_in_executor(None, self._remove, disk)

    def close(self) -> None:
        """Unmount and delete the pool's disks (at shutdown)."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
            filler = self._filler
        for disk in ready:
            self._remove(disk)
        # A disk being made now is removed by its maker once it sees the pool closed; wait,
        # or the process could exit with that disk still mounted (a loop device kept).
        if filler is not None:
            filler.join(timeout=60)

    @staticmethod
    def full(disk: Path) -> bool:
        """Whether the filesystem at ``disk`` has (next to) no room left."""
        try:
            st = os.statvfs(disk)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < max(1 << 20, st.f_blocks * st.f_frsize // 200)
