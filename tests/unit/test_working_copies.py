"""A working copy's file work never goes through a symlink or blocks on a FIFO (pure, no root)."""

from __future__ import annotations

import os

import pytest

from ketch.server.blobs import BlobStore
from ketch.worker import volumes as wc


def _entry(path: str, blob: str, size: int) -> dict:
    return {
        "path": path,
        "type": "f",
        "blob": blob,
        "target": None,
        "size": size,
        "mode": 0o644,
        "mtime": 1.0,
    }


def test_open_file_refuses_symlinks_and_fifos(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (data / "d").symlink_to(outside)
    (data / "f").symlink_to(outside / "secret")
    os.mkfifo(data / "p")
    (data / "ok").write_text("ok")
    for rel in ("d/secret", "f", "p"):
        with pytest.raises(wc.UnsafePath):
            wc.open_file(data, rel)
    fd = wc.open_file(data, "ok")
    assert os.read(fd, 10) == b"ok"
    os.close(fd)
    with pytest.raises(wc.UnsafePath):
        wc.open_file(data, "../outside/secret")


def test_update_never_writes_or_deletes_through_a_symlinked_folder(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    old, size = blobs.put(b"old"), 3
    new = blobs.put(b"new")
    data, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    head = [
        {
            "path": "d",
            "type": "d",
            "blob": None,
            "target": None,
            "size": 0,
            "mode": 0o755,
            "mtime": 1.0,
        },
        _entry("d/x", old, size),
        _entry("d/keep", old, size),
    ]
    state = wc.materialize(data, head, blobs.path)
    for name in os.listdir(data / "d"):
        (data / "d" / name).unlink()
    (data / "d").rmdir()
    (data / "d").symlink_to(outside)  # the container's change
    changed_head = [head[0], _entry("d/x", new, size)]  # d/x changed, d/keep deleted upstream
    after = wc.update(data, state, changed_head, blobs.path)
    assert sorted(os.listdir(outside)) == ["keep"] and (outside / "keep").read_text() == "keep"
    assert after["d/x"] == state["d/x"]  # left as it was: the symlink is the change here
    changes, _ = wc.collect(data, after, blobs.ingest)
    assert changes["d"]["type"] == "l" and changes["d/x"] is None  # committed as a symlink


def test_scan_lists_a_symlink_and_skips_a_fifo(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "link").symlink_to("/etc")
    os.mkfifo(data / "fifo")
    changed, deleted = wc.scan(data, {})
    assert set(changed) == {"link"} and changed["link"][2] == "/etc" and deleted == []
