"""Run a command as an ordinary account, from root, with this checkout in reach.

``python tests/as_account.py UID GID PATH[:PATH...] -- COMMAND...`` unshares a
mount namespace, makes each PATH (the Python installation, the virtual
environment, the checkout) reachable by the account, drops to UID:GID with no
supplementary groups, and execs COMMAND. Nothing changes outside the command.

A directory the account may not enter (``/root`` is 0700) is covered by an
empty tmpfs in that namespace, and only the needed entries of it are bound
back: what else it holds stays out of reach, as it is for the account anyway.
The rootless tests and ``benchmarks/cold_start.py`` use it: ketch installed
under ``/root`` could not otherwise be run by a fresh account at all.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import tempfile

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if (
        libc.mount(
            src.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")


def _enterable(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def reach(paths: list[str], uid: int, gid: int) -> None:
    """Make every directory on the way to each of ``paths`` enterable by ``uid``."""
    hidden_root = tempfile.mkdtemp(prefix="as-account-")
    covered: dict[str, str] = {}  # a covered directory -> where its real contents are
    for path in sorted(set(paths)):
        current = "/"
        for name in [p for p in path.split("/") if p]:
            child = os.path.join(current, name)
            if current in covered and not os.path.lexists(child):
                real = os.path.join(covered[current], name)
                if os.path.isdir(real):
                    os.mkdir(child)
                else:
                    open(child, "w").close()
                _mount(real, child, None, MS_BIND | MS_REC)
            current = child
            if os.path.isdir(current) and not _enterable(current, uid, gid):
                hidden = os.path.join(hidden_root, str(len(covered)))
                os.mkdir(hidden)
                _mount(current, hidden, None, MS_BIND | MS_REC)
                _mount("tmpfs", current, "tmpfs", 0, "mode=0755")
                covered[current] = hidden
    for hidden in covered.values():
        libc.umount2(hidden.encode(), MNT_DETACH)  # what was bound back stays
        os.rmdir(hidden)
    os.rmdir(hidden_root)


def main(argv: list[str]) -> None:
    uid, gid, paths = int(argv[1]), int(argv[2]), [p for p in argv[3].split(":") if p]
    command = argv[argv.index("--") + 1 :]
    if libc.unshare(CLONE_NEWNS) != 0:
        raise SystemExit(f"as_account: unshare: {os.strerror(ctypes.get_errno())}")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    reach(paths, uid, gid)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
