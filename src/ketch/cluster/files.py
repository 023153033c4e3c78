"""Trees of files between the control plane and a node, through Ray's object store.

A tree travels as a tar stream (owners by number, extended attributes kept),
put into the object store in pieces of ``CHUNK`` bytes and unpacked on the
other side. ``sync_tree`` then makes a directory that is in use (a Volume's
working copy, bound into a running container) equal to what arrived, in
place, touching only what differs.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHUNK = 32 << 20
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


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode)
        and a.st_size == b.st_size
        and int(a.st_mtime) == int(b.st_mtime)
        and a.st_mode == b.st_mode
        and (a.st_uid, a.st_gid) == (b.st_uid, b.st_gid)
    )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def sync_tree(src: Path, dst: Path) -> None:
    """Make ``dst``'s contents equal ``src``'s (which is used up), in place: entries that
    differ are moved over, entries ``src`` lacks are deleted, equal ones are left alone.

    ``dst`` may be bound into a running container, whose code can swap any folder in it
    for a symlink at any time: every step works relative to folder descriptors opened
    with ``O_NOFOLLOW``, so nothing outside ``dst`` is ever written or deleted.
    """
    dst.mkdir(parents=True, exist_ok=True)
    s_fd, d_fd = os.open(src, _DIR_FLAGS), os.open(dst, _DIR_FLAGS)
    try:
        _sync(s_fd, d_fd)
    finally:
        os.close(s_fd)
        os.close(d_fd)


def _lstat(name: str, fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _sync(s_fd: int, d_fd: int) -> None:
    wanted = set(os.listdir(s_fd))
    for name in os.listdir(d_fd):
        if name not in wanted:
            _remove(name, d_fd)
    for name in sorted(wanted):
        s_st = os.stat(name, dir_fd=s_fd, follow_symlinks=False)
        d_st = _lstat(name, d_fd)
        if stat.S_ISDIR(s_st.st_mode):
            if d_st is not None and not stat.S_ISDIR(d_st.st_mode):
                _remove(name, d_fd)
                d_st = None
            if d_st is None:
                _move(name, s_fd, d_fd)
                continue
            try:
                sub_d = os.open(name, _DIR_FLAGS, dir_fd=d_fd)
            except OSError:  # swapped for something else since: replace it whole
                _remove(name, d_fd)
                _move(name, s_fd, d_fd)
                continue
            sub_s = os.open(name, _DIR_FLAGS, dir_fd=s_fd)
            try:
                _sync(sub_s, sub_d)
                os.fchmod(sub_d, stat.S_IMODE(s_st.st_mode))
                os.fchown(sub_d, s_st.st_uid, s_st.st_gid)
            finally:
                os.close(sub_s)
                os.close(sub_d)
            continue
        if d_st is not None and _same(s_st, d_st):
            continue
        if d_st is not None and stat.S_ISDIR(d_st.st_mode):
            _remove(name, d_fd)
        _move(name, s_fd, d_fd)


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
