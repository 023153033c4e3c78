"""A node's side of Volumes: working copies that containers mount.

A container that mounts a Volume gets a plain directory on its node (a
*working copy*) filled from the Volume's committed files, bound at the mount
path. ``commit`` finds what changed in the directory since it was filled or
last committed, stores changed files as content-addressed blobs, and hands the
changes to the control plane, which applies them in one transaction.
``reload`` brings the directory up to the Volume's newest committed state.

When the control plane may mount overlayfs (as root), a read-write working
copy is an overlay: its lower layer is hard links to the blobs (filled
without copying a byte) and its upper layer takes what the container
changes (the kernel copies a file up when it is first written). ``data`` is
then the merged mount; a file that is not in the upper layer is unchanged
since the fill, whatever its times say.

A read-only mount whose runtime enforces read-only (the sandbox's
``--ro-bind``, the local runtime's read-only bind as root) gets *linked*
working copies: each file is a hard link to its blob, so filling it copies no
bytes however large the Volume is. A file is copied instead where its mode
differs from the blob's (executables) or the blob is on another filesystem;
a linked file shows the blob's modification time, not the committed one.

Entries (the wire shape, also kept in ``state.json`` beside the directory)::

    {"path": "a/b.txt", "type": "f"|"d"|"l", "blob": "bl-…"|None, "target": str|None,
     "size": int, "mode": int, "mtime": float}

The state also keeps, per file, the ``(size, mtime_ns, inode)`` it had when it
last matched its entry; a file whose stat differs has changed. Everything here
is blocking file work, run in threads by the control plane.

A working copy is written by untrusted code while the control plane, as its
own user (often root), reads and writes it. So nothing here resolves a path
through the copy: every folder is opened from the copy's root one name at a
time with ``O_NOFOLLOW`` and every file operation is relative to its folder's
descriptor. A symlink the container made where a folder was (``d -> /etc``),
or a file swapped for a symlink or a FIFO between a scan and a read, is never
followed: :class:`UnsafePath`, and the entry is left as the container made it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".ketch-tmp-"
Entry = dict[str, Any]
State = dict[str, Entry]  # path -> entry (+ "stat" for files)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path in a working copy goes through something that is not a folder (a symlink the
    container made, say), or names something that is not a regular file where one was."""


def _parts(rel: str) -> list[str]:
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"bad path in a Volume: {rel!r}")
    return parts


def open_dir(root: Path, parts: list[str], create: bool = False, owner: int | None = None) -> int:
    """A descriptor of the folder ``root/parts...``, every name opened with ``O_NOFOLLOW``;
    ``create``: make the missing ones (owned by ``owner`` if given)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise UnsafePath(f"bad folder name in a Volume: {part!r}")
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                    if owner is not None:
                        os.chown(part, owner, owner, dir_fd=fd, follow_symlinks=False)
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise UnsafePath(f"{part!r} in a Volume's working copy is not a folder") from None
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def parent_dir(
    root: Path, rel: str, create: bool = False, owner: int | None = None
) -> Iterator[tuple[int, str]]:
    """``(descriptor of the folder holding root/rel, its last name)``, opened as
    :func:`open_dir` does; the descriptor is closed after the block."""
    parts = _parts(rel)
    fd = open_dir(root, parts[:-1], create, owner)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def open_file(root: Path, rel: str) -> int:
    """A read-only descriptor of the regular file ``root/rel``, opened without following any
    symlink (nor blocking on a FIFO put in its place)."""
    with parent_dir(root, rel) as (parent, name):
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent
            )
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise UnsafePath(f"{rel!r} in a Volume's working copy is not a file") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{rel!r} in a Volume's working copy is not a regular file")
    return fd


def _lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def same_content(a: Entry | None, b: Entry | None) -> bool:
    if a is None or b is None:
        return a is b
    return (
        a["type"] == b["type"]
        and a.get("blob") == b.get("blob")
        and a.get("target") == b.get("target")
    )


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def load_state(work: Path) -> dict[str, Any]:
    return dict(json.loads((work / "state.json").read_text()))


def save_state(work: Path, state: dict[str, Any]) -> None:
    tmp = work / f"state.json.{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(state))
    tmp.replace(work / "state.json")


def _write_entry(
    data: Path,
    entry: Entry,
    blob_path: Callable[[str], Path],
    link: bool = False,
    owner: int | None = None,
) -> Entry:
    """Put one entry in the directory (replacing what is there); returns it with its stat.

    With ``link`` a file becomes a hard link to its blob where that keeps its mode.
    ``owner``: the uid (and gid) what is written here belongs to; None: the writer's.
    Raises :class:`UnsafePath` where a folder on its path is not one.
    """
    with parent_dir(data, entry["path"], create=True, owner=owner) as (parent, name):
        there = _lstat_at(name, parent)
        is_dir = there is not None and stat.S_ISDIR(there.st_mode)
        if entry["type"] == "d":
            if there is not None and not is_dir:
                os.unlink(name, dir_fd=parent)
            if not is_dir:
                os.mkdir(name, 0o777, dir_fd=parent)
                if owner is not None:
                    os.chown(name, owner, owner, dir_fd=parent, follow_symlinks=False)
            return dict(entry)
        if is_dir:
            shutil.rmtree(name, dir_fd=parent)
        tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            if entry["type"] == "l":
                os.symlink(entry["target"], tmp, dir_fd=parent)
                if owner is not None:
                    os.chown(tmp, owner, owner, dir_fd=parent, follow_symlinks=False)
                os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
                return dict(entry)
            blob = blob_path(entry["blob"])
            if not (link and _link(blob, tmp, entry["mode"], parent)):
                _copy(blob, tmp, parent, entry, owner)
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            raise
        return {**entry, "stat": stat_key(os.stat(name, dir_fd=parent, follow_symlinks=False))}


def _link(blob: Path, name: str, mode: int, dir_fd: int) -> bool:
    """Hard-link ``blob`` as ``name`` in ``dir_fd`` if it has ``mode`` (a link shares the
    blob's mode and times)."""
    if stat.S_IMODE(os.stat(blob).st_mode) != mode & 0o7777:
        return False
    try:
        os.link(blob, name, dst_dir_fd=dir_fd)
    except OSError:  # another filesystem, or links not allowed: copy instead
        return False
    return True


def _copy(blob: Path, name: str, dir_fd: int, entry: Entry, owner: int | None) -> None:
    from ..server.blobs import copy_range

    out = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dir_fd,
    )
    try:
        with open(blob, "rb") as fin:
            copy_range(fin.fileno(), out, os.fstat(fin.fileno()).st_size)
        if owner is not None:  # before chmod: chown clears setuid bits
            os.fchown(out, owner, owner)
        os.fchmod(out, entry["mode"] & 0o7777)
        ns = int(entry["mtime"] * 1e9)
        os.utime(out, ns=(ns, ns))
    finally:
        os.close(out)


def materialize(
    data: Path, entries: list[Entry], blob_path: Callable[[str], Path], link: bool = False
) -> State:
    """Fill the empty directory ``data`` with ``entries``; returns the new state."""
    data.mkdir(parents=True, exist_ok=True)
    state: State = {}
    for entry in sorted(entries, key=lambda e: e["path"]):
        with contextlib.suppress(UnsafePath):  # under a symlink entry: not a folder
            state[entry["path"]] = _write_entry(data, entry, blob_path, link)
    return state


def scan(
    data: Path, state: State, upper: Path | None = None
) -> tuple[dict[str, tuple[str, os.stat_result, str | None]], list[str]]:
    """What changed in ``data`` since ``state``: ``({path: (type, stat, link target)}, deleted)``.

    ``upper``: the overlay's upper layer when ``data`` is an overlay; a file
    only in the lower layer has not changed (its times are its blob's, which
    move when the same bytes are stored again).
    """
    changed: dict[str, tuple[str, os.stat_result, str | None]] = {}
    seen: set[str] = set()
    stack: list[list[str]] = [[]]
    while stack:
        parts = stack.pop()
        prefix = "".join(p + "/" for p in parts)
        try:  # (a folder swapped for a symlink since it was listed is not entered)
            folder = open_dir(data, parts)
        except (FileNotFoundError, UnsafePath):
            continue
        try:
            with os.scandir(folder) as it:
                items = list(it)
            for item in items:
                if item.name.startswith(TMP_PREFIX):
                    continue
                rel = prefix + item.name
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                base = state.get(rel)
                if stat.S_ISDIR(st.st_mode):
                    kind, target = "d", None
                    stack.append([*parts, item.name])
                    dirty = base is None or base["type"] != "d"
                elif stat.S_ISLNK(st.st_mode):
                    try:
                        kind, target = "l", os.readlink(item.name, dir_fd=folder)
                    except OSError:  # no longer a symlink: seen again next time
                        continue
                    dirty = base is None or base["type"] != "l" or base.get("target") != target
                elif stat.S_ISREG(st.st_mode):
                    kind, target = "f", None
                    dirty = (
                        base is None
                        or base["type"] != "f"
                        or (
                            (upper is None or os.path.lexists(upper / rel))
                            and base.get("stat") != stat_key(st)
                        )
                    )
                else:
                    continue  # sockets, fifos and devices are not stored
                seen.add(rel)
                if dirty:
                    changed[rel] = (kind, st, target)
        finally:
            os.close(folder)
    deleted = [p for p in state if p not in seen]
    return changed, deleted


def collect(
    data: Path, state: State, ingest: Callable[[int], tuple[str, int]], upper: Path | None = None
) -> tuple[dict[str, Entry | None], State]:
    """Store every changed file (``ingest`` reads an open descriptor); returns the changes
    to commit and the state after them."""
    changed, deleted = scan(data, state, upper)
    changes: dict[str, Entry | None] = {p: None for p in deleted}
    after = {p: e for p, e in state.items() if p not in deleted}
    for rel, (kind, st, target) in sorted(changed.items()):
        entry: Entry = {
            "path": rel,
            "type": kind,
            "blob": None,
            "target": target,
            "size": 0,
            "mode": stat.S_IMODE(st.st_mode),
            "mtime": st.st_mtime,
        }
        if kind == "f":
            try:
                fd = open_file(data, rel)
            except FileNotFoundError:  # removed while we looked
                if rel in state:
                    changes[rel] = None
                    after.pop(rel, None)
                continue
            except UnsafePath:  # swapped for a symlink (or other) meanwhile: next time
                continue
            try:
                entry["blob"], entry["size"] = ingest(fd)
            finally:
                os.close(fd)
            entry["stat"] = stat_key(st)  # as it was before reading: a later write shows next time
        changes[rel] = {k: v for k, v in entry.items() if k != "stat"}
        after[rel] = entry
    return changes, after


def update(
    data: Path,
    state: State,
    head: list[Entry],
    blob_path: Callable[[str], Path],
    link: bool = False,
    upper: Path | None = None,
    owner: int | None = None,
) -> State:
    """Bring ``data`` up to ``head``; files changed here and not there stay (uncommitted).

    Where both changed a file, the committed version wins: reload takes what
    other containers committed. A linked (read-only) copy has no changes of its
    own: a blob's time moves when it is stored again, which is not a change.
    ``owner``: the uid what this writes belongs to (root of the containers' user
    namespace, for a copy that is an overlay of idmapped layers); None: ours.
    """
    local: set[str] = set()
    if not link:
        changed, deleted_here = scan(data, state, upper)
        local = set(changed) | set(deleted_here)
    new: State = {}
    wanted = {e["path"]: e for e in head}
    for path in sorted(wanted):
        entry = wanted[path]
        base = state.get(path)
        if same_content(base, entry) and base is not None:
            new[path] = base
            continue
        try:
            new[path] = _write_entry(data, entry, blob_path, link, owner)
        except UnsafePath:  # a folder on its path is a symlink here now: that change stays
            if base is not None:
                new[path] = base
    for path in sorted((p for p in state if p not in wanted), reverse=True):
        if path in local:
            continue  # changed here since: kept, and committed next time as new
        # (UnsafePath too: nothing through a symlink)
        with contextlib.suppress(OSError), parent_dir(data, path) as (parent, name):
            there = _lstat_at(name, parent)
            if there is not None and stat.S_ISDIR(there.st_mode):
                os.rmdir(name, dir_fd=parent)  # only if empty: files added here stay
            elif there is not None:
                os.unlink(name, dir_fd=parent)
    return new


def boot_id() -> str:
    """This machine's boot id: equal only for processes on the same machine, same boot
    (they share its files); "" when unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
