"""An ordinary account's control plane: root of a user namespace of its own.

Started by an account that is not root, the control plane moves itself, first
thing and while it has one thread, into a new user namespace and mount
namespace (:func:`enter`). Inside, it is uid 0 with every capability over what
that namespace maps, and nothing more on the host: it mounts overlays, runs
bubblewrap and builds images as the root control plane does, and the host sees
the account (and its subordinate ids) own everything it makes. Its mounts live
and die with it.

The mapping, as rootless Podman and Docker make it:

* with ``newuidmap``/``newgidmap`` and a range in ``/etc/subuid`` and
  ``/etc/subgid``: 0 is the account, and 1.. are its subordinate ids, so that
  files in images keep their owners (``_apt``, ``nobody``, a ``USER``);
* otherwise the account alone, as 0 (a *single-id* mapping): registry images
  are unpacked without their files' owners, apt downloads as root, and
  ``debian_slim`` (whose packages own files as several users) says what to ask for.

Containers then run as root of this namespace, which is the account on the
host (as in rootless Podman): they hold Docker's default capabilities over the
namespace's ids only, in their own mount, pid, ipc and uts namespaces, with the
seccomp filter; from the host's side they can do nothing the account cannot.

Example::

    state = enter()            # before any thread starts
    if state.mapping is None:
        print("no sandbox runtime:", state.why_not)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
MAP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Mapping:
    """How the control plane's user namespace maps to the host."""

    uid: int  # the account, shown as 0 inside
    gid: int
    user: str
    sub_uids: tuple[int, int] | None  # (first host id, count) shown as 1.., or None
    sub_gids: tuple[int, int] | None

    @property
    def single_id(self) -> bool:
        return self.sub_uids is None or self.sub_gids is None

    def describe(self) -> str:
        if self.sub_uids is None:
            return f"rootless: root inside is {self.user} (uid {self.uid}), the only id mapped"
        first, count = self.sub_uids
        return (
            f"rootless: root inside is {self.user} (uid {self.uid}); "
            f"ids 1-{count} are its subordinate ids {first}-{first + count - 1}"
        )


@dataclass(frozen=True)
class State:
    mapping: Mapping | None
    why_not: str = ""  # why there is no namespace (for ``ketch server status`` and the log)
    notes: tuple[str, ...] = ()  # what a better setup would add (told once, in the log)


_state: State | None = None


def current() -> Mapping | None:
    """The mapping of this process's namespace, once :func:`enter` made one."""
    return _state.mapping if _state is not None else None


def state() -> State | None:
    return _state


def host_uid() -> int:
    """This process's uid on the host (the account's, inside its namespace)."""
    mapping = current()
    return mapping.uid if mapping is not None else os.getuid()


def subordinate_range(path: Path, user: str, uid: int) -> tuple[int, int] | None:
    """The account's first range in ``/etc/subuid`` (or ``subgid``): ``(start, count)``."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        if parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            return int(parts[1]), int(parts[2])
    return None


def install_hint(package: str) -> str:
    """How to get a missing Debian package: as root, the command; otherwise whom to ask."""
    if os.geteuid() == 0 and current() is None:
        return f"apt-get install {package}"
    return f"ask an administrator: sudo apt-get install -y {package}"


def userns_restrictions() -> str:
    """A host setting that takes capabilities away in unprivileged user namespaces, if any
    (Ubuntu 23.10+ restricts them with AppArmor), as a note for a failure's message."""
    for path, value in (
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
    ):
        try:
            if Path(path).read_text().strip() == value:
                name = path.removeprefix("/proc/sys/").replace("/", ".")
                return f"this host sets {name}={value}, which an administrator can change"
        except OSError:
            continue
    return ""


def admin_command(user: str) -> str:
    """What an administrator runs to give ``user`` what a full rootless setup needs."""
    return (
        "sudo apt-get install -y bubblewrap uidmap mmdebstrap && "
        f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}"
        " (choose a range no other account has)"
    )


def _plan() -> tuple[Mapping | None, str, list[str]]:
    """The mapping this account can have, or why none; plus notes on what is missing."""
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    if shutil.which("bwrap") is None:
        return None, f"bubblewrap is not installed; ask an administrator: {admin_command(user)}", []
    notes: list[str] = []
    subs = [
        subordinate_range(path, user, id) for path, id in zip(SUBID_FILES, (uid, gid), strict=True)
    ]
    tools = [shutil.which(name) for name in ("newuidmap", "newgidmap")]
    if None in tools:
        notes.append("newuidmap/newgidmap are not installed (Debian package uidmap)")
        subs = [None, None]
    elif None in subs:
        notes.append(f"{user} has no subordinate ids in /etc/subuid and /etc/subgid")
    if notes:
        notes.append(
            "containers get a single-id mapping (debian_slim cannot be built); "
            f"for the full mapping ask an administrator: {admin_command(user)}"
        )
    if None in subs:
        subs = [None, None]
    return Mapping(uid, gid, user, subs[0], subs[1]), "", notes


def enter() -> State:
    """Move this (single-threaded) process into its own user and mount namespace.

    Called once by an unprivileged control plane before it starts anything; a
    second call returns the first answer. Never raises: on failure the state
    says why, and the process is unchanged.
    """
    global _state
    if _state is not None:
        return _state
    if os.geteuid() == 0:
        _state = State(None, "the control plane is root")
        return _state
    mapping, why_not, notes = _plan()
    if mapping is None:
        _state = State(None, why_not)
        return _state
    if not mapping.single_id and (refused := _try_ranged(mapping)):
        notes.append(
            f"the subordinate ids could not be mapped ({refused}); using a single-id mapping"
        )
        mapping = Mapping(mapping.uid, mapping.gid, mapping.user, None, None)
    try:
        _unshare(mapping)
    except OSError as exc:
        note = userns_restrictions()
        _state = State(
            None, f"cannot make a user namespace: {exc}" + (f" ({note})" if note else "")
        )
        return _state
    _state = State(mapping, "", tuple(notes))
    return _state


def _unshare(mapping: Mapping) -> None:
    """unshare(2) a user and mount namespace with ``mapping``; raises ``OSError`` (unchanged)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if mapping.single_id:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise _errno_error("unshare(CLONE_NEWUSER)")
        # An unprivileged process may map only itself, and only once setgroups is off.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {mapping.uid} 1\n")
        _write("/proc/self/gid_map", f"0 {mapping.gid} 1\n")
    else:
        _unshare_with_helper(libc, mapping)
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _errno_error("making the mounts private")


def _map_ids(pid: int, mapping: Mapping) -> str:
    """Have newuidmap/newgidmap write ``pid``'s maps; "" when both did, else what they said."""
    assert mapping.sub_uids is not None and mapping.sub_gids is not None
    errors = []
    for tool, own, (first, count) in (
        ("newuidmap", mapping.uid, mapping.sub_uids),
        ("newgidmap", mapping.gid, mapping.sub_gids),
    ):
        argv = [tool, str(pid), "0", str(own), "1", "1", str(first), str(count)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=MAP_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{tool}: {exc}")
            continue
        if done.returncode != 0:
            errors.append(f"{tool}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return "; ".join(errors)


@contextlib.contextmanager
def unshared_child() -> Iterator[int]:
    """A child process in a new, unmapped user namespace, waiting while its maps are
    written; yields its pid, and ends it on exit. Raises ``OSError`` if it cannot unshare.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            os.write(ready_w, b"u" if libc.unshare(CLONE_NEWUSER) == 0 else b"e")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError("unshare(CLONE_NEWUSER) failed (are user namespaces turned off?)")
        yield pid
    finally:
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def _try_ranged(mapping: Mapping) -> str:
    """Whether newuidmap maps the ranges, tried on a throwaway child; "" when it does.

    A process whose namespace stays unmapped cannot go back, so the real
    process unshares only once this worked.
    """
    try:
        with unshared_child() as pid:
            return _map_ids(pid, mapping)
    except OSError as exc:
        return str(exc)


def _unshare_with_helper(libc: ctypes.CDLL, mapping: Mapping) -> None:
    """The ranged mapping: a child, still outside, has newuidmap write this process's maps.

    Only a process in the parent namespace may write them, and the setuid helpers
    check the ranges against ``/etc/subuid`` and ``/etc/subgid``.
    """
    target = os.getpid()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: wait for the unshare, map, report, go
        try:
            os.close(go_w)
            os.close(done_r)
            if os.read(go_r, 1) == b"g":
                os.write(done_w, (_map_ids(target, mapping) or "ok").encode()[:4000])
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(done_w)
    try:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise _errno_error("unshare(CLONE_NEWUSER)")
        os.write(go_w, b"g")
        answer = os.read(done_r, 4096).decode(errors="replace")
    finally:
        os.close(go_w)
        os.close(done_r)
        os.waitpid(pid, 0)
    if answer != "ok":
        # In a namespace that stays unmapped this process is nobody: it cannot go on.
        raise SystemExit(f"ketch: mapping the control plane's user namespace failed: {answer}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")
