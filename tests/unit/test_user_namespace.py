"""The user namespace's pure parts: when it is off, and the on-disk ids it gives back."""

from __future__ import annotations

import os
import stat

import pytest

from ketch.worker import userns


def test_turned_off_or_out_of_range_falls_back_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("KETCH_USERNS", "0")
    assert userns.start(tmp_path) == (None, "turned off by KETCH_USERNS=0")
    monkeypatch.setenv("KETCH_USERNS", "1")
    monkeypatch.setenv("KETCH_USERNS_BASE", str(2**32 - 10))
    ns, why = userns.start(tmp_path)
    assert ns is None and "userns_base" in why and "out of range" in why


def test_makedirs_in_a_plain_directory_keeps_the_writers_ids(tmp_path):
    ns = userns.UserNamespace(tmp_path / "run", base=1_000_000_000)  # never created: no mounts
    ns.makedirs(tmp_path, "/srv/app")
    assert (tmp_path / "srv" / "app").is_dir()
    assert os.stat(tmp_path / "srv").st_uid == os.geteuid()
    assert ns.enter(["bwrap", "true"])[-3:] == ["--", "bwrap", "true"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other ids needs root")
def test_restore_ids_gives_overlayfs_whiteouts_back_to_root(tmp_path):
    whiteout = tmp_path / "etc" / "gone"
    whiteout.parent.mkdir()
    os.mknod(whiteout, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.lchown(whiteout, userns.HOST_ROOT_ON_DISK, userns.HOST_ROOT_ON_DISK)
    (tmp_path / "etc" / "kept").write_text("x")
    os.lchown(tmp_path / "etc" / "kept", 1000, 1000)
    userns.restore_ids(tmp_path)
    assert (os.lstat(whiteout).st_uid, os.lstat(whiteout).st_gid) == (0, 0)
    assert os.lstat(tmp_path / "etc" / "kept").st_uid == 1000  # ids a container gave stay


def test_a_workdir_is_made_inside_the_root_whatever_the_image_links(tmp_path):
    """An image's symlinks (``/work -> /outside``, ``/lib -> usr/lib``) resolve inside its
    root when the control plane makes a workdir there, never to the host's folders."""
    from ketch.worker.userns import mkdirs

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "usr" / "lib").mkdir(parents=True)
    outside.mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "work").symlink_to(outside)  # absolute: the host's folder, seen from the host
    (root / "up").symlink_to("../../outside")
    mkdirs(root, "/lib/app/x", None)
    assert (root / "usr" / "lib" / "app" / "x").is_dir()
    for rel in ("/work/x", "/up/y"):
        with pytest.raises(OSError):
            mkdirs(root, rel, None)
    assert list(outside.iterdir()) == []
    mkdirs(root, "/plain/deep/er", None)
    assert (root / "plain" / "deep" / "er").is_dir()
