"""Give a running container device nodes: bind host paths into its mount namespace.

A container forked from a template (:mod:`ketch.worker.forks`) makes its own mount
namespace before the worker knows it, and its template holds no GPU device nodes
(it may run the user's snap hooks), so the worker puts the nodes of the GPUs a fork
owns into the fork's ``/dev`` from outside, before the fork's code runs: a helper
process clones each node's mount here (``open_tree``), enters the fork's mount
namespace (``setns``, which a threaded process such as the worker may not do) and
attaches the clone there (``move_mount``). The fork made the mount points.

Usage (as root, or root of the node's user namespace)::

    python -m ketch.worker.devices PID /dev/nvidia0 /dev/nvidiactl ...
"""

from __future__ import annotations

import ctypes
import os
import sys

OPEN_TREE = 428
MOVE_MOUNT = 429
SETNS = {"x86_64": 308, "aarch64": 268}
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
CLONE_NEWNS = 0x00020000


def bind_into(pid: int, paths: list[str]) -> None:
    """Bind each of ``paths`` (this namespace's) at the same path in ``pid``'s mount
    namespace; raises ``OSError`` naming the step that failed."""
    import platform

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def check(result: int, what: str) -> int:
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return result

    clones = []
    for path in paths:
        flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
        clones.append(
            check(libc.syscall(OPEN_TREE, AT_FDCWD, path.encode(), flags), f"clone {path}")
        )
    ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    check(libc.syscall(SETNS[platform.machine()], ns, CLONE_NEWNS), "enter its mount namespace")
    os.chdir("/")
    for fd, path in zip(clones, paths, strict=True):
        check(
            libc.syscall(MOVE_MOUNT, fd, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH),
            f"attach {path}",
        )


def main() -> None:
    pid, paths = int(sys.argv[1]), sys.argv[2:]
    try:
        bind_into(pid, paths)
    except OSError as exc:
        sys.exit(f"ketch: {exc}")


if __name__ == "__main__":
    main()
