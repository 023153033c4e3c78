"""The pool of scratch disks leaves nothing mounted once closed (root and loop devices only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.worker import scratch

pytestmark = pytest.mark.timeout(120)


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/mounts") as fh:
        return [line.split()[1] for line in fh if line.split()[1].startswith(str(root))]


def test_close_waits_for_a_disk_being_made(tmp_path):
    """Regression: close() returned while the pool's thread was making a disk, so a process
    that exited right after kept that disk mounted (and its loop device)."""
    if (why := scratch.support()) is not None:
        pytest.skip(why)
    pool = scratch.ScratchDisks(tmp_path / "scratch", 64, pool_size=2)  # starts filling now
    pool.close()
    assert pool._filler is not None and not pool._filler.is_alive()
    assert _mounts_under(tmp_path) == []
