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


def sync_tree(src: Path, dst: Path) -> None:
    """Make ``dst``'s contents equal ``src``'s (which is used up), in place: entries that
    differ are moved over, entries ``src`` lacks are deleted, equal ones are left alone."""
    dst.mkdir(parents=True, exist_ok=True)
    wanted = set(os.listdir(src))
    for name in os.listdir(dst):
        if name not in wanted:
            _remove(dst / name)
    for name in sorted(wanted):
        s, d = src / name, dst / name
        s_st = os.lstat(s)
        try:
            d_st: os.stat_result | None = os.lstat(d)
        except FileNotFoundError:
            d_st = None
        if stat.S_ISDIR(s_st.st_mode):
            if d_st is not None and not stat.S_ISDIR(d_st.st_mode):
                _remove(d)
                d_st = None
            if d_st is None:
                _move(s, d)
                continue
            sync_tree(s, d)
            os.chmod(d, stat.S_IMODE(s_st.st_mode))
            os.chown(d, s_st.st_uid, s_st.st_gid)
            continue
        if d_st is not None and _same(s_st, d_st):
            continue
        if d_st is not None and stat.S_ISDIR(d_st.st_mode):
            _remove(d)
        _move(s, d)


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` over ``dst``; across filesystems (an overlay-mounted working copy),
    copy it with its owners, modes and times instead."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
        for top, dirs, names in os.walk(src):
            for name in [*dirs, *names]:
                st = os.lstat(os.path.join(top, name))
                target = os.path.join(dst, os.path.relpath(os.path.join(top, name), src))
                os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
        st = os.lstat(src)
        os.chown(dst, st.st_uid, st.st_gid)
        return
    st = os.lstat(src)
    temporary = dst.parent / f".{dst.name}.ketch-sync"
    shutil.copy2(src, temporary, follow_symlinks=False)
    os.chown(temporary, st.st_uid, st.st_gid, follow_symlinks=False)
    os.replace(temporary, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
