"""``ketch.cluster.files.sync_tree``: a working copy in use made equal to what came back."""

from __future__ import annotations

import os
from pathlib import Path

from ketch.cluster.files import sync_tree


def _tree(root):
    out = {}
    for top, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            out[rel] = None if os.path.isdir(path) else Path(path).read_text()
    return out


def test_sync_tree_moves_what_differs_deletes_what_is_gone_and_keeps_the_rest(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        (root / "keep").mkdir(parents=True)
        (root / "keep" / "same.txt").write_text("same")
        os.utime(root / "keep" / "same.txt", (1_000_000, 1_000_000))
    (dst / "gone.txt").write_text("old")
    (dst / "changed.txt").write_text("old")
    (dst / "was-a-file").write_text("file")
    (src / "changed.txt").write_text("new!")
    (src / "new-dir" / "deep").mkdir(parents=True)
    (src / "new-dir" / "deep" / "x").write_text("x")
    (src / "was-a-file").mkdir()
    (src / "was-a-file" / "y").write_text("y")
    kept_inode = os.stat(dst / "keep" / "same.txt").st_ino
    expected = _tree(src)

    sync_tree(src, dst)

    assert _tree(dst) == expected
    assert os.stat(dst / "keep" / "same.txt").st_ino == kept_inode  # untouched: no rewrite


def test_sync_tree_never_writes_or_deletes_through_a_symlink(tmp_path):
    """The container may have made a folder of its copy a symlink to anywhere: it is
    replaced (or removed), never followed."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_text("x")
    dst.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (dst / "d").symlink_to(outside)
    (dst / "e").symlink_to(outside)

    sync_tree(src, dst)

    assert sorted(os.listdir(outside)) == ["keep"]
    assert (dst / "d").is_dir() and not (dst / "d").is_symlink()
    assert _tree(dst) == {"d": None, "d/x": "x"}
