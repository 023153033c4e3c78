"""Volume mounts for containers of the ``local`` runtime, applied by the container itself.

The sandbox runtime binds working copies with bubblewrap. A ``local`` container
is a host process, so it mounts its own: as root it enters a private mount
namespace and bind-mounts each working copy at its path (creating an empty
mount point on the host if the path does not exist), read-only for
``vol.read_only()``; without root it makes the path a symlink to the working
copy, which needs the path to be free and its folder writable, and cannot
make it read-only (nothing it writes there is committed). Either way the
container sees its Volume at the path it asked for.
"""

from __future__ import annotations

import ctypes
import json
import os

from ..exception import InvalidError

_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def apply_volume_mounts() -> None:
    raw = os.environ.pop("KETCH_VOLUME_MOUNTS", "")
    if not raw:
        return
    mounts = [(str(h), str(p), bool(ro)) for h, p, ro in json.loads(raw)]
    if os.geteuid() == 0:
        libc = _libc()
        _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
        for host_dir, path, read_only in mounts:
            os.makedirs(path, exist_ok=True)
            _check(
                libc.mount(host_dir.encode(), path.encode(), None, _MS_BIND | _MS_REC, None),
                f"mounting {path}",
            )
            if read_only:  # a bind mount takes MS_RDONLY only on a remount
                flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
                _check(
                    libc.mount(b"none", path.encode(), None, flags, None),
                    f"making {path} read-only",
                )
        return
    for host_dir, path, _ in mounts:
        if os.path.islink(path):
            os.unlink(path)
        elif os.path.exists(path):
            raise InvalidError(
                f"the local runtime cannot mount a Volume at {path}: the path exists and mounting needs root "
                "(use a free path, run the control plane as root, or use the sandbox runtime)"
            )
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        os.symlink(host_dir, path)
