"""Volume building blocks: tree-hashed blobs, working copies, and the committed-state rules."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from ketch.exception import InvalidError, NotFoundError
from ketch.server import objects
from ketch.server.blobs import BLOCK, BlobStore
from ketch.server.store import Store
from ketch.server.volumes import VolumeService, head, norm
from ketch.worker import volumes as wc

pytestmark = pytest.mark.timeout(60)


# (More than 4 blocks wraps the ring of block buffers that ingest hashes from on 2 cores.)
@pytest.mark.parametrize(
    "size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 7, 5 * BLOCK, 11 * BLOCK + 3]
)
def test_blob_ids_agree_however_the_bytes_arrive(tmp_path, size):
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    streamed = store.writer()
    for i in range(0, size, 1_000_003):
        streamed.write(data[i : i + 1_000_003])
    ingested, n = store.ingest(tmp_path / "f")
    ids = {store.put(data), ingested, streamed.finish()}
    blocks = [data[i : i + BLOCK] for i in range(0, size, BLOCK)] or [b""]
    assert ids == {
        "bl-" + hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).hexdigest()
    }
    assert n == size and store.path(ingested).read_bytes() == data
    assert store.path(ids.pop()).read_bytes() == data
    assert not list((tmp_path / "blobs").glob("tmp-*"))


def test_working_copy_collect_and_update(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    data = tmp_path / "data"
    state = wc.materialize(data, [], blobs.path)
    (data / "d").mkdir(parents=True)
    (data / "d" / "a.txt").write_text("a")
    (data / "b.txt").write_text("b")
    os.symlink("b.txt", data / "link")
    changes, state = wc.collect(data, state, blobs.ingest)
    assert sorted(changes) == ["b.txt", "d", "d/a.txt", "link"]
    assert changes["link"]["target"] == "b.txt" and changes["d"]["type"] == "d"
    # Nothing changed: nothing to commit.
    assert wc.collect(data, state, blobs.ingest)[0] == {}
    time.sleep(0.01)
    (data / "b.txt").write_text("B!")
    (data / "d" / "a.txt").unlink()
    changes, state = wc.collect(data, state, blobs.ingest)
    assert changes["d/a.txt"] is None and changes["b.txt"]["size"] == 2

    # Another copy brought up to a newer head keeps its own uncommitted file.
    other = tmp_path / "other"
    other_state = wc.materialize(other, [], blobs.path)
    (other / "mine.txt").write_text("uncommitted")
    committed = [e for e in state.values()]
    other_state = wc.update(other, other_state, committed, blobs.path)
    assert (other / "b.txt").read_text() == "B!" and os.readlink(other / "link") == "b.txt"
    assert (other / "mine.txt").read_text() == "uncommitted"
    assert "mine.txt" in wc.collect(other, other_state, blobs.ingest)[0]
    # A file deleted in the head goes, unless it was changed here.
    other_state = wc.update(
        other, other_state, [e for e in committed if e["path"] != "b.txt"], blobs.path
    )
    assert not (other / "b.txt").exists()


def test_linked_working_copy(tmp_path):
    """A read-only (linked) copy hard-links blobs whose mode matches and copies the rest."""
    blobs = BlobStore(tmp_path / "blobs")
    plain, script = blobs.put(b"weights"), blobs.put(b"#!/bin/sh\n")
    blob_mode = os.stat(blobs.path(plain)).st_mode & 0o7777
    entry = {"type": "f", "target": None, "size": 7, "mtime": 1_000_000.0}
    head = [
        {**entry, "path": "w.bin", "blob": plain, "mode": blob_mode},
        {**entry, "path": "run.sh", "blob": script, "mode": 0o755},
        {**entry, "path": "gone.bin", "blob": plain, "mode": blob_mode},
    ]
    data = tmp_path / "data"
    state = wc.materialize(data, head, blobs.path, link=True)
    assert os.path.samefile(data / "w.bin", blobs.path(plain))  # no bytes copied
    assert not os.path.samefile(data / "run.sh", blobs.path(script))
    assert (
        os.stat(data / "run.sh").st_mode & 0o7777 == 0o755
        and os.stat(data / "run.sh").st_mtime == 1_000_000.0
    )
    # Storing the same bytes again moves the blob's time: not a local change, so a
    # file the head dropped still goes at reload.
    time.sleep(0.01)
    blobs.put(b"weights")
    state = wc.update(data, state, head[:2], blobs.path, link=True)
    assert not (data / "gone.bin").exists() and sorted(state) == ["run.sh", "w.bin"]
    assert blobs.path(plain).read_bytes() == b"weights"  # the blob is intact


@pytest.fixture
def service(tmp_path):
    store = Store(tmp_path / "state.db")
    svc = VolumeService(store, tmp_path)
    oid = objects.create(store, "volume", "unit-vol")
    yield svc, oid
    store.close()


def _file(svc: VolumeService, path: str, text: str) -> dict:
    return {
        "path": path,
        "type": "f",
        "blob": svc.blobs.put(text.encode()),
        "target": None,
        "size": len(text),
        "mode": 0o644,
        "mtime": time.time(),
    }


def test_apply_makes_parents_and_last_commit_wins(service):
    svc, oid = service
    v1, _ = svc.apply(oid, {"a/b/c.txt": _file(svc, "a/b/c.txt", "one")})
    v2, _ = svc.apply(
        oid, {"a/b/c.txt": _file(svc, "a/b/c.txt", "two"), "x.txt": _file(svc, "x.txt", "x")}
    )
    assert v2 == v1 + 1
    entries = {e["path"]: e for e in head(svc.store, oid)}
    assert sorted(entries) == ["a", "a/b", "a/b/c.txt", "x.txt"]
    assert svc.blobs.path(entries["a/b/c.txt"]["blob"]).read_text() == "two"
    # A directory another commit put a file into is not deleted by an older view's delete.
    svc.apply(oid, {"a": None})
    assert "a" in {e["path"] for e in head(svc.store, oid)}


def test_missing_blob_is_reported_not_applied(service):
    svc, oid = service
    entry = _file(svc, "gone.txt", "gone")
    svc.blobs.path(entry["blob"]).unlink()
    at, missing = svc.apply(oid, {"gone.txt": entry})
    assert missing == ["gone.txt"] and head(svc.store, oid) == []


def test_remove_copy_and_paths(service):
    svc, oid = service
    svc.apply(oid, {"d/a": _file(svc, "d/a", "a"), "d/e/b": _file(svc, "d/e/b", "b")})
    with pytest.raises(InvalidError, match="recursive"):
        svc.remove(oid, "d", recursive=False)
    with pytest.raises(InvalidError, match="recursive"):
        svc.copy(oid, ["d"], "d2", recursive=False)
    svc.copy(oid, ["d"], "d2", recursive=True)
    svc.copy(oid, ["d/a", "d/e/b"], "flat", recursive=False)
    svc.remove(oid, "d", recursive=True)
    assert sorted(e["path"] for e in head(svc.store, oid)) == [
        "d2",
        "d2/a",
        "d2/e",
        "d2/e/b",
        "flat",
        "flat/a",
        "flat/b",
    ]
    with pytest.raises(NotFoundError):
        svc.remove(oid, "nope", recursive=False)
    assert norm("/a//b/./c/") == "a/b/c" and norm("/") == ""
    with pytest.raises(InvalidError):
        norm("../x")


def test_unreferenced_blobs_are_collected(service):
    svc, oid = service
    entry = _file(svc, "f", "old")
    svc.apply(oid, {"f": entry})
    svc.apply(oid, {"f": _file(svc, "f", "new")})
    assert svc.blobs.exists(entry["blob"])
    assert asyncio.run(svc.collect_garbage(grace=0)) == 1
    assert not svc.blobs.exists(entry["blob"])


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0, reason="overlay working copies need root")
def test_overlay_copy_is_mounted_again_before_a_restart_commits_it(tmp_path):
    """A machine restart drops a working copy's overlay mount but not its upper layer: the
    next start mounts it again and commits the change, instead of committing every file as deleted."""
    from ketch.worker import isolate

    store = Store(tmp_path / "state.db")
    svc = VolumeService(store, tmp_path)
    oid = objects.create(store, "volume", "overlay-vol")
    svc.apply(oid, {"a.txt": _file(svc, "a.txt", "one"), "b.txt": _file(svc, "b.txt", "two")})

    async def go() -> None:
        [(host, _, _)] = await svc.prepare("c-1", [{"object_id": oid, "path": "/data"}])
        data = Path(host)
        if not os.path.ismount(data):
            pytest.skip("overlayfs is not available here")
        assert os.stat(data / "a.txt").st_nlink >= 2  # a link to the blob, not a copy
        (data / "a.txt").write_text("changed")
        assert (
            svc.blobs.get(_blob(store, oid, "a.txt")) == b"one"
        )  # copied up: the blob is untouched
        await isolate.unmount(data)  # what a reboot does
        assert not (data / "b.txt").exists()
        again = VolumeService(store, tmp_path)
        await again.start()
        if again._gc_task:
            again._gc_task.cancel()

    try:
        asyncio.run(go())
        assert svc.blobs.get(_blob(store, oid, "a.txt")) == b"changed"
        assert svc.blobs.get(_blob(store, oid, "b.txt")) == b"two"
        assert not any(svc.work.iterdir())
        assert str(tmp_path) not in Path("/proc/mounts").read_text()
    finally:
        for line in Path("/proc/mounts").read_text().splitlines():
            if str(tmp_path) in line.split()[1]:
                subprocess.run(["umount", "-l", line.split()[1]], check=False)
        store.close()


def _blob(store: Store, oid: str, path: str) -> str:
    return next(e["blob"] for e in head(store, oid) if e["path"] == path)


@pytest.mark.timeout(60)
def test_a_failed_overlay_mount_falls_back_to_a_plain_copy(service):
    svc, oid = service
    svc.apply(oid, {"a.txt": _file(svc, "a.txt", "one")})
    svc._overlays = True  # as if the probe had passed

    async def refuse(work: Path) -> None:
        raise RuntimeError("mount overlay failed (exit 32): no space for the mount table")

    svc._mount = refuse  # type: ignore[method-assign]

    async def go() -> None:
        [(host, _, _)] = await svc.prepare("c-1", [{"object_id": oid, "path": "/data"}])
        data = Path(host)
        assert (data / "a.txt").read_text() == "one" and os.stat(data / "a.txt").st_nlink == 1
        assert "overlay" not in wc.load_state(data.parent) and not (data.parent / "lower").exists()
        (data / "b.txt").write_text("two")
        await svc.commit("c-1", oid)

    asyncio.run(go())
    assert svc.blobs.get(_blob(svc.store, oid, "b.txt")) == b"two"
