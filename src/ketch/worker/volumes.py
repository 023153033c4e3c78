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
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..worker.userns import mkdirs

TMP_PREFIX = ".ketch-tmp-"
Entry = dict[str, Any]
State = dict[str, Entry]  # path -> entry (+ "stat" for files)


def same_content(a: Entry | None, b: Entry | None) -> bool:
    if a is None or b is None:
        return a is b
    return (
        a["type"] == b["type"]
        and a.get("blob") == b.get("blob")
        and a.get("target") == b.get("target")
    )


def _stat_key(st: os.stat_result) -> list[int]:
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
    """
    dest = data / entry["path"]
    mkdirs(dest.parent, owner)
    if entry["type"] == "d":
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        mkdirs(dest, owner)
        return dict(entry)
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    tmp = dest.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
    try:
        if entry["type"] == "l":
            os.symlink(entry["target"], tmp)
            if owner is not None:
                os.lchown(tmp, owner, owner)
            os.replace(tmp, dest)
            return dict(entry)
        if not (link and _link(blob_path(entry["blob"]), tmp, entry["mode"])):
            _copy(blob_path(entry["blob"]), tmp)
            if owner is not None:  # before chmod: chown clears setuid bits
                os.lchown(tmp, owner, owner)
            os.chmod(tmp, entry["mode"] & 0o7777)
            ns = int(entry["mtime"] * 1e9)
            os.utime(tmp, ns=(ns, ns))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return {**entry, "stat": _stat_key(os.lstat(dest))}


def _link(blob: Path, dest: Path, mode: int) -> bool:
    """Hard-link ``blob`` at ``dest`` if it has ``mode`` (a link shares the blob's mode and times)."""
    if stat.S_IMODE(os.stat(blob).st_mode) != mode & 0o7777:
        return False
    try:
        os.link(blob, dest)
    except OSError:  # another filesystem, or links not allowed: copy instead
        return False
    return True


def _copy(src: Path, dest: Path) -> None:
    from ..server.blobs import copy_range

    with open(src, "rb") as fin, open(dest, "wb") as fout:
        copy_range(fin.fileno(), fout.fileno(), os.fstat(fin.fileno()).st_size)


def materialize(
    data: Path, entries: list[Entry], blob_path: Callable[[str], Path], link: bool = False
) -> State:
    """Fill the empty directory ``data`` with ``entries``; returns the new state."""
    data.mkdir(parents=True, exist_ok=True)
    state: State = {}
    for entry in sorted(entries, key=lambda e: e["path"]):
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
    stack = [(data, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            it = os.scandir(folder)
        except FileNotFoundError:
            continue
        with it:
            for item in it:
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
                    stack.append((Path(item.path), rel + "/"))
                    dirty = base is None or base["type"] != "d"
                elif stat.S_ISLNK(st.st_mode):
                    kind, target = "l", os.readlink(item.path)
                    dirty = base is None or base["type"] != "l" or base.get("target") != target
                elif stat.S_ISREG(st.st_mode):
                    kind, target = "f", None
                    dirty = (
                        base is None
                        or base["type"] != "f"
                        or (
                            (upper is None or os.path.lexists(upper / rel))
                            and base.get("stat") != _stat_key(st)
                        )
                    )
                else:
                    continue  # sockets, fifos and devices are not stored
                seen.add(rel)
                if dirty:
                    changed[rel] = (kind, st, target)
    deleted = [p for p in state if p not in seen]
    return changed, deleted


def collect(
    data: Path, state: State, ingest: Callable[[Path], tuple[str, int]], upper: Path | None = None
) -> tuple[dict[str, Entry | None], State]:
    """Store every changed file; returns the changes to commit and the state after them."""
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
                entry["blob"], entry["size"] = ingest(data / rel)
            except FileNotFoundError:  # removed while we looked
                if rel in state:
                    changes[rel] = None
                    after.pop(rel, None)
                continue
            entry["stat"] = _stat_key(st)  # as it was before reading: a later write shows next time
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
        new[path] = _write_entry(data, entry, blob_path, link, owner)
    for path in sorted((p for p in state if p not in wanted), reverse=True):
        if path in local:
            continue  # changed here since: kept, and committed next time as new
        target = data / path
        with contextlib.suppress(FileNotFoundError, OSError):
            if target.is_dir() and not target.is_symlink():
                target.rmdir()  # only if empty: files added here stay
            else:
                target.unlink()
    return new


def boot_id() -> str:
    """This machine's boot id: equal only for processes on the same machine, same boot
    (they share its files); "" when unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
