"""Trees of files between the control plane and a node, through Ray's object store.

A tree (an image layer, a sandbox's snapshot) travels as a tar stream (owners
by number, extended attributes kept), put into the object store in pieces of
``CHUNK`` bytes and unpacked on the other side.

Volumes' copies on a node travel by parts: blobs by id (``pack_named``), once
per node, and what a container changed (``pack_changes``, read without
following any symlink it made), applied to the control plane's working copy
with ``apply_changes``, which works through folder descriptors opened with
``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHUNK = 32 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*")


def pack(path: Path) -> tuple[list[Any], int]:
    """``path``'s contents as object refs of a tar stream, and its size in bytes."""
    import ray

    proc = subprocess.Popen(
        ["tar", "-C", str(path), "-cf", "-", *TAR_FLAGS, "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    refs, size = [], 0
    while chunk := proc.stdout.read(CHUNK):
        refs.append(ray.put(chunk))
        size += len(chunk)
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"could not read {path}: {err.decode(errors='replace')[-500:]}")
    return refs, size


def _put_file(fh: Any) -> tuple[list[Any], int]:
    """A finished temporary file's bytes as object refs (from its start), and its size."""
    import ray

    fh.seek(0)
    refs, size = [], 0
    while chunk := fh.read(CHUNK):
        refs.append(ray.put(chunk))
        size += len(chunk)
    return refs, size


def pack_named(items: Sequence[tuple[str, Path]], scratch: Path) -> tuple[list[Any], int]:
    """Files of this machine's own (blobs: nothing untrusted writes them) as a tar stream
    whose members are named ``name``; ``scratch``: where the stream is staged."""
    with tempfile.TemporaryFile(dir=scratch) as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, path in items:
                tar.add(str(path), arcname=name, recursive=False)
        return _put_file(out)


Change = tuple[str, "str | None", "list[int] | None"]  # (type, link target, stat key)


def pack_changes(root: Path, rels: Sequence[str]) -> tuple[list[Any], int, dict[str, Change]]:
    """The entries ``rels`` of ``root`` (a working copy its container may be changing now)
    as a tar stream; also what went in, as ``{rel: (type, target, stat key)}``.

    Folders are opened one name at a time with ``O_NOFOLLOW`` and files read through a
    descriptor (``O_NOFOLLOW | O_NONBLOCK``, regular files only), copied first so that a
    file still being written goes in whole; what was swapped or removed meanwhile is left
    out (it is still a change, sent next time)."""
    with tempfile.TemporaryFile(dir=root.parent) as out:
        included = write_changes(root, rels, out)
        refs, size = _put_file(out)
    return refs, size, included


def write_changes(root: Path, rels: Sequence[str], out: Any) -> dict[str, Change]:
    """:func:`pack_changes`'s tar stream, written to the file ``out``."""
    from ..worker import volumes as wc

    included: dict[str, Change] = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in rels:
            try:
                with wc.parent_dir(root, rel) as (parent, name):
                    change = _add_entry(tar, rel, name, parent, root.parent)
            except OSError:
                continue
            if change is not None:
                included[rel] = change
    return included


def _add_entry(
    tar: tarfile.TarFile, rel: str, name: str, parent: int, scratch: Path
) -> Change | None:
    from ..worker.volumes import stat_key

    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    info = tarfile.TarInfo(rel)
    info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    info.mtime = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return ("d", None, None)
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=parent)
        tar.addfile(info)
        return ("l", info.linkname, None)
    if not stat.S_ISREG(st.st_mode):
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with os.fdopen(os.open(name, flags, dir_fd=parent), "rb") as fin:
        before = os.fstat(fin.fileno())
        if not stat.S_ISREG(before.st_mode):
            return None
        with tempfile.TemporaryFile(dir=scratch) as copy:
            shutil.copyfileobj(fin, copy, CHUNK)
            info.size = copy.tell()
            copy.seek(0)
            tar.addfile(info, copy)
    return ("f", None, stat_key(before))


def apply_changes(src: Path, dst: Path, changed: Sequence[str], deleted: Sequence[str]) -> None:
    """Make ``dst`` (the control plane's working copy) take a node's changes: ``deleted``
    entries go, the ``changed`` ones (unpacked under ``src``) replace what is there."""
    from ..worker import volumes as wc

    for rel in sorted(deleted, reverse=True):
        with contextlib.suppress(OSError), wc.parent_dir(dst, rel) as (parent, name):
            _remove(name, parent)
    moved: set[str] = set()
    for rel in sorted(changed):
        parts = rel.split("/")
        if any("/".join(parts[:i]) in moved for i in range(1, len(parts))):
            continue  # it came with its new folder
        try:
            with (
                wc.parent_dir(src, rel) as (s_parent, name),
                wc.parent_dir(dst, rel, create=True) as (d_parent, _),
            ):
                if _apply(name, s_parent, d_parent):
                    moved.add(rel)
        except FileNotFoundError:  # left out of the stream: removed or swapped on the node
            continue
        except wc.UnsafePath:  # a symlink here where the node has a folder: never followed
            continue


def _apply(name: str, s_fd: int, d_fd: int) -> bool:
    """One changed entry; True if it was a folder moved whole (with what is in it)."""
    s_st = _lstat(name, s_fd)
    if s_st is None:
        return False
    d_st = _lstat(name, d_fd)
    d_is_dir = d_st is not None and stat.S_ISDIR(d_st.st_mode)
    if stat.S_ISDIR(s_st.st_mode) and d_is_dir:
        sub = os.open(name, _DIR_FLAGS, dir_fd=d_fd)
        try:
            os.fchmod(sub, stat.S_IMODE(s_st.st_mode))
            os.fchown(sub, s_st.st_uid, s_st.st_gid)
        finally:
            os.close(sub)
        return False
    if d_st is not None and (d_is_dir or stat.S_ISDIR(s_st.st_mode)):
        _remove(name, d_fd)
    _move(name, s_fd, d_fd)
    return stat.S_ISDIR(s_st.st_mode)


def unpack(refs: Sequence[Any], into: Path) -> None:
    """Unpack the tar stream ``refs`` (from :func:`pack`) into the directory ``into``."""
    import ray

    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["tar", "-C", str(into), "-xf", "-", *TAR_FLAGS],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        for ref in refs:
            proc.stdin.write(ray.get(ref))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"could not unpack into {into}: {err.decode(errors='replace')[-500:]}")


def _lstat(name: str, fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _move(name: str, s_fd: int, d_fd: int) -> None:
    """Rename ``name`` from folder ``s_fd`` over the same name in ``d_fd`` (a rename never
    follows the symlink it replaces); across filesystems (an overlay-mounted working copy),
    copy it with its owners, modes and times under a fresh name first, then rename."""
    try:
        os.replace(name, name, src_dir_fd=s_fd, dst_dir_fd=d_fd)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fresh = f".ketch-sync-{secrets.token_hex(8)}"
    src = f"/proc/self/fd/{s_fd}/{name}"  # (the folder the descriptor holds, not a path walk)
    dest = f"/proc/self/fd/{d_fd}/{fresh}"
    st = os.stat(name, dir_fd=s_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.copytree(src, dest, symlinks=True)
        for top, dirs, names in os.walk(src):
            for entry in [*dirs, *names]:
                entry_st = os.lstat(os.path.join(top, entry))
                target = os.path.join(dest, os.path.relpath(os.path.join(top, entry), src))
                os.chown(target, entry_st.st_uid, entry_st.st_gid, follow_symlinks=False)
        os.chown(dest, st.st_uid, st.st_gid)
    else:
        shutil.copy2(src, dest, follow_symlinks=False)
        os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
    os.replace(fresh, name, src_dir_fd=d_fd, dst_dir_fd=d_fd)


def _remove(name: str, fd: int) -> None:
    st = _lstat(name, fd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=fd)
    else:
        os.unlink(name, dir_fd=fd)
