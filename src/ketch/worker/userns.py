"""Container root is nobody on the host: the node's user namespace and idmapped mounts.

Containers and image build steps run as root of one user namespace per
control plane, ``U``, whose ids ``0..65535`` are the host's ``BASE..BASE+65535``
(``userns_base``, default 1,000,000,000: far above the ranges ``useradd``
hands out in ``/etc/subuid``). A process that breaks out of its mounts is uid
``BASE`` on the host, which owns nothing there.

Files keep the ids they have on disk today (an image's files are host uid 0,
and what a container writes lands as 0 too): what a sandbox sees of the host's
filesystems it sees through *idmapped mounts* (Linux 5.12+), which show on-disk
id ``k`` as ``BASE+k``, i.e. as ``k`` inside ``U``:

* an overlay's lower dirs through idmapped mounts with ``U``, and its upper and
  work dirs through one of their common parent with a second namespace
  ``U_up`` (``U`` plus on-disk id 65536 for host root) that no process enters:
  overlayfs creates its work dir and whiteouts as the mounter (host root); with
  ``U`` alone it cannot (``EOVERFLOW``) and mounts the overlay read-only
  without a word. Those mounts go once the overlay is up (it keeps clones);
* host directories bound into a sandbox (the app's source, ``copy=False``
  mounts, Volume copies, the runtime bundle, a build's caches) through
  idmapped mounts made for that sandbox (:class:`Staging`).

bubblewrap then runs as root of ``U`` (``nsenter --user``), unchanged. It
resolves every bind source by path (``realpath``, even for ``--bind-fd``), and
root of ``U`` cannot walk directories private to host root (``KETCH_HOME``, the
socket directory, ``/root``): so every sandbox's root and bind sources are
mounted in a directory of its own under ``/run/ketch/<hash of KETCH_HOME>``,
which is host root's with group ``BASE`` and mode 0710: root of ``U`` may walk
it, other host users (who can read the mount points in ``/proc/self/mountinfo``)
may not enter.

Both namespaces are made once (a child ``unshare(CLONE_NEWUSER)``s, host root
writes its maps) and pinned by bind mounts of their ``/proc/PID/ns/user``
there; a start after a crash detaches what is left first.

Example::

    ns, why_not = start(home, probe_dirs=[cache_root])
    with ns.staging() as stage:
        root = stage.mount_point()
        await ns.mount_overlay(lowers, upper, work, root)
        argv = ns.enter(["bwrap", "--bind", str(root), "/", "--ro-bind", str(stage.expose(src)), "/src", "sh"])
    ns.close()
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._config import config
from . import isolate, rootless

logger = logging.getLogger(__name__)

COUNT = 65536  # ids per namespace: 0..65535 inside, as rootless containers map
HOST_ROOT_ON_DISK = COUNT  # where U_up puts host root on disk (overlayfs's own work files)
RUN_ROOT = Path("/run/ketch")
# System call numbers: the unified table, the same on x86-64 and aarch64.
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MOUNT_ATTR_IDMAP = 0x100000
MS_BIND, MS_REC, MNT_DETACH = 0x1000, 0x4000, 2
ENOSYS = 38


class _OpenHow(ctypes.Structure):  # struct open_how (openat2, Linux 5.6+)
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


SYS_OPENAT2 = 437  # the same number on x86-64 and aarch64
RESOLVE_IN_ROOT = 0x10


def _open_in_root(root_fd: int, rel: str) -> int:
    """The folder ``rel`` resolved as if ``root_fd`` were ``/`` (its symlinks, absolute or
    ``..``, cannot leave it): ``openat2(RESOLVE_IN_ROOT)``."""
    how = _OpenHow(os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT)
    libc = isolate.libc()
    fd = libc.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(root_fd),
        ctypes.c_char_p(os.fsencode(rel or ".")),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{rel}: {os.strerror(err)}")
    return int(fd)


def mkdirs(root: Path, rel: str, owner: int | None) -> None:
    """``mkdir -p root/rel`` with ``root`` as ``/``: symlinks on the way (an image's own,
    made by its build steps) resolve inside ``root``, never to the host's folders. The
    folders it makes belong to ``owner`` (uid and gid) if given."""
    parts = [p for p in rel.split("/") if p and p != "."]
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth in range(1, len(parts) + 1):
            try:
                os.close(_open_in_root(root_fd, "/".join(parts[:depth])))
                continue
            except FileNotFoundError:
                pass
            parent = _open_in_root(root_fd, "/".join(parts[: depth - 1]))
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(parts[depth - 1], 0o777, dir_fd=parent)
                    if owner is not None:
                        os.chown(
                            parts[depth - 1], owner, owner, dir_fd=parent, follow_symlinks=False
                        )
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)


class _MountAttr(ctypes.Structure):  # struct mount_attr, MOUNT_ATTR_SIZE_VER0 (32 bytes)
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def idmap_mount(
    src: Path, dest: Path, userns_fd: int, read_only: bool = False, nosuid: bool = False
) -> None:
    """Mount ``src`` again at ``dest`` (an existing dir, or file for a file), ids mapped by ``userns_fd``."""
    libc = isolate.libc()
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
    fd = _check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(src), flags), f"open_tree {src}")
    try:
        attrs = MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if read_only else 0)
        attrs |= (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV) if nosuid else 0
        attr = _MountAttr(attr_set=attrs, userns_fd=userns_fd)
        setattr_call = libc.syscall(
            SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
        )
        _check(setattr_call, f"idmapping {src}")
        move = libc.syscall(
            SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, os.fsencode(dest), MOVE_MOUNT_F_EMPTY_PATH
        )
        _check(move, f"move_mount to {dest}")
    finally:
        os.close(fd)


def bind_mount(src: Path, dest: Path, recursive: bool = True) -> None:
    """A plain bind mount of ``src`` on ``dest``; not ``recursive``: nothing mounted inside
    ``src`` comes along."""
    flags = MS_BIND | (MS_REC if recursive else 0)
    _check(
        isolate.libc().mount(os.fsencode(src), os.fsencode(dest), None, flags, None),
        f"binding {src}",
    )


def detach(path: Path) -> None:
    """Unmount ``path`` lazily; nothing mounted there is fine."""
    isolate.unmount_sync(path)


def mounts_below(top: Path) -> list[Path]:
    """Mount points at or under ``top``, deepest first."""
    return sorted(map(Path, isolate.mount_points(top)), key=lambda p: len(p.parts), reverse=True)


def clear(top: Path) -> None:
    """Detach every mount under ``top`` (a crashed control plane's too), then delete it."""
    for _ in range(8):  # stacked mounts need a pass each
        points = mounts_below(top)
        if not points:
            break
        for point in points:
            detach(point)
    shutil.rmtree(top, ignore_errors=True)


def _make_userns(base: int, extra: str = "") -> int:
    """A user namespace mapping ``0..COUNT-1`` to ``base..`` (plus ``extra`` map lines); an fd on it."""
    with rootless.unshared_child() as pid:
        mapping = f"0 {base} {COUNT}\n{extra}"
        # setgroups stays "allow": nsenter clears the supplementary groups when it enters.
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as fh:
                fh.write(mapping)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)


def run_dir(home: Path) -> Path:
    """Where the control plane of ``home`` mounts its sandboxes' roots and binds."""
    return RUN_ROOT / hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]


class UserNamespace:
    """The node's namespace ``U`` (and ``U_up``), pinned under ``dir``; see the module docstring."""

    def __init__(self, dir: Path, base: int) -> None:
        self.dir = dir
        self.base = base
        self.user_file = dir / "ns" / "user"
        self.upper_file = dir / "ns" / "user-upper"
        self._nsenter = shutil.which("nsenter") or "nsenter"

    @classmethod
    def create(cls, dir: Path, base: int) -> UserNamespace:
        """Make and pin both namespaces under ``dir`` (cleared first)."""
        clear(dir)
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        os.chmod(RUN_ROOT, 0o711)  # whatever the umask
        # Host root's, and walkable by gid BASE alone (root of U): /proc/self/mountinfo
        # names the mount points below to every host user, who must not enter them.
        dir.mkdir()
        os.chown(dir, 0, base)
        os.chmod(dir, 0o710)
        (dir / "ns").mkdir(mode=0o700)
        ns = cls(dir, base)
        try:
            for target, extra in ((ns.user_file, ""), (ns.upper_file, f"{COUNT} 0 1\n")):
                fd = _make_userns(base, extra)
                try:
                    target.touch()
                    bind_mount(Path(f"/proc/self/fd/{fd}"), target)
                finally:
                    os.close(fd)
        except BaseException:
            ns.close()
            raise
        return ns

    def describe(self) -> str:
        return f"user namespace (root inside is host uid {self.base}; ids {self.base}-{self.base + COUNT - 1})"

    def enter(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as root of ``U`` (uid and gid 0 there, no supplementary groups)."""
        return [self._nsenter, f"--user={self.user_file}", "--", *argv]

    def owns(self, path: Path) -> bool:
        """Whether ``path`` already shows an id of ``U`` (an overlay of idmapped layers, say)."""
        try:
            return self.base <= os.stat(path).st_uid < self.base + COUNT
        except OSError:
            return False

    def userns_fd(self, upper: bool = False) -> int:
        return os.open(self.upper_file if upper else self.user_file, os.O_RDONLY | os.O_CLOEXEC)

    def staging(self) -> Staging:
        return Staging(self)

    def overlay_layers(
        self, stage: Staging, lowers: Sequence[Path], upper: Path, work: Path
    ) -> tuple[list[Path], Path, Path]:
        """Idmapped mounts in ``stage`` to build an overlay from: ``(lowers, upper, work)``.

        Lowers with ``U``; ``upper`` and ``work`` through one mount of their
        common parent with ``U_up``. Once the overlay is up they may go: it
        keeps private clones of its layers.
        """
        for path in (upper, work):  # by host root, as without the namespace: 0:0 on disk
            path.mkdir(parents=True, exist_ok=True)
        lower_paths = [stage.idmap(p, read_only=True) for p in lowers]
        parent = Path(os.path.commonpath([upper, work]))
        rw = stage.idmap(parent, upper=True)
        return lower_paths, rw / upper.relative_to(parent), rw / work.relative_to(parent)

    async def mount_overlay(
        self, lowers: Sequence[Path], upper: Path, work: Path, merged: Path, extra: str = ""
    ) -> None:
        """:func:`isolate.mount_overlay` over idmapped layers: its files show as ``U``'s."""
        with self.staging() as stage:
            await isolate.mount_overlay(
                *self.overlay_layers(stage, lowers, upper, work), merged, extra
            )
        if _read_only(merged):
            await isolate.unmount(merged)
            raise RuntimeError(f"the overlay at {merged} came up read-only over idmapped layers")

    def makedirs(self, root: Path, rel: str) -> None:
        """``mkdir -p root/rel`` as host root; in an overlay of idmapped layers the new dirs
        become root's of ``U`` (else they would be nobody's inside, and 65536 on disk).
        """
        # A plain directory (not ours): on-disk ids as host root makes them.
        mkdirs(root, rel, self.base if self.owns(root) else None)

    def close(self) -> None:
        """Detach the pins and whatever is still staged (mounted overlays keep working)."""
        clear(self.dir)


class Staging:
    """A sandbox's mount points, in a directory root of ``U`` can walk; :meth:`close` detaches them."""

    def __init__(self, ns: UserNamespace) -> None:
        self.ns = ns
        self.dir = ns.dir / secrets.token_hex(12)  # unguessable: the parent is not listable
        self._points: list[Path] = []

    def mount_point(self, like: Path | None = None) -> Path:
        """A new empty directory (or file, when ``like`` is not a directory) to mount on."""
        if not self._points:
            self.dir.mkdir()
            os.chmod(self.dir, 0o711)
        target = self.dir / str(len(self._points))
        if like is None or os.path.isdir(like):
            target.mkdir()
        else:
            target.touch()
        self._points.append(target)
        return target

    def idmap(
        self, src: Path, upper: bool = False, read_only: bool = False, nosuid: bool = False
    ) -> Path:
        """``src`` (a dir or file) through an idmapped mount with ``U`` (``U_up`` with ``upper``)."""
        target = self.mount_point(src)
        fd = self.ns.userns_fd(upper)
        try:
            idmap_mount(Path(src), target, fd, read_only=read_only, nosuid=nosuid)
        finally:
            os.close(fd)
        return target

    def bind(self, src: Path) -> Path:
        """``src`` as it is (a socket, or what shows ``U``'s ids already), where bubblewrap reaches it."""
        target = self.mount_point(src)
        bind_mount(Path(src), target)
        return target

    def expose(self, src: Path, writable: bool = False, nosuid: bool | None = None) -> Path:
        """``src`` for a bind into the sandbox: idmapped (``nosuid`` if ``writable``, unless
        told), unless its ids are ``U``'s already; what is staged already is itself.

        On a filesystem without idmapped mounts it is bound as it is, and says so:
        its files then show as nobody's inside (world-readable ones stay readable).
        """
        if Path(src).is_relative_to(self.ns.dir):
            return Path(src)
        if self.ns.owns(src):
            return self.bind(src)
        try:
            return self.idmap(
                src, read_only=not writable, nosuid=writable if nosuid is None else nosuid
            )
        except OSError as exc:
            if exc.errno == ENOSYS:
                raise
            logger.warning(
                "%s is bound without an idmapping (its files show as nobody's): %s", src, exc
            )
            return self.bind(src)

    def close(self) -> None:
        for target in reversed(self._points):
            detach(target)
        self._points.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def mount_overlay(
    ns: UserNamespace | None,
    lowers: Sequence[Path],
    upper: Path,
    work: Path,
    merged: Path,
    extra: str = "",
) -> None:
    """An overlay for a sandbox: over idmapped layers with a namespace, as it is without one."""
    if ns is None:
        await isolate.mount_overlay(lowers, upper, work, merged, extra)
    else:
        await ns.mount_overlay(lowers, upper, work, merged, extra)


def makedirs(ns: UserNamespace | None, root: Path, rel: str) -> None:
    """``mkdir -p root/rel``, owned as the sandbox's root will need (:meth:`UserNamespace.makedirs`)."""
    if ns is None:
        mkdirs(root, rel, None)
    else:
        ns.makedirs(root, rel)


def restore_ids(upper: Path) -> None:
    """Give on-disk id 0 back to what overlayfs wrote as host root (whiteouts) in ``upper``.

    Through ``U_up`` those land as 65536 on disk (no process of ``U`` can make that
    id); a layer then has exactly the ids it would have had without the namespace.
    """
    for top, dirs, files in os.walk(upper):
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if HOST_ROOT_ON_DISK in (st.st_uid, st.st_gid):
                    uid = 0 if st.st_uid == HOST_ROOT_ON_DISK else -1
                    os.lchown(path, uid, 0 if st.st_gid == HOST_ROOT_ON_DISK else -1)


def _in_use(base: int) -> str | None:
    """An ``/etc/subuid`` range or ``/etc/passwd`` user inside ``base..base+COUNT``, if any."""
    with contextlib.suppress(OSError), open("/etc/subuid") as fh:
        for line in fh:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                start, count = int(parts[1]), int(parts[2])
                if start < base + COUNT and base < start + count:
                    return f"/etc/subuid gives {parts[0]} {start}-{start + count - 1}"
    with contextlib.suppress(OSError), open("/etc/passwd") as fh:
        for line in fh:
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isdigit() and base <= int(parts[2]) < base + COUNT:
                return f"user {parts[0]} has uid {parts[2]}"
    return None


def start(home: Path, probe_dirs: Iterable[Path] = ()) -> tuple[UserNamespace | None, str]:
    """The node's user namespace, or None and why not (containers then run as host root).

    Off with ``KETCH_USERNS=0``; needs root, ``nsenter``, and idmapped mounts on
    the filesystems of ``home`` and ``probe_dirs``. Clears what a crashed control
    plane of ``home`` left mounted either way.
    """
    dir = run_dir(home)
    if os.geteuid() == 0:
        clear(dir)
    if not config.get("userns"):
        return None, "turned off by KETCH_USERNS=0"
    base = int(config.get("userns_base"))
    if not 0 < base <= 2**32 - 2 - COUNT:
        return None, f"userns_base={base} is out of range (1..{2**32 - 2 - COUNT})"
    if os.geteuid() != 0:
        return None, "the control plane is not root"
    if (mapping := rootless.current()) is not None:
        return None, mapping.describe()
    if shutil.which("nsenter") is None:
        return None, "nsenter is not installed (apt-get install util-linux)"
    try:
        ns = UserNamespace.create(dir, base)
    except OSError as exc:
        return None, f"cannot make a user namespace: {exc}"
    try:
        _probe(ns, home, probe_dirs)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        ns.close()
        if getattr(exc, "errno", None) == ENOSYS:
            return None, f"this kernel ({os.uname().release}) has no idmapped mounts (Linux 5.12+)"
        return None, f"idmapped mounts do not work here: {exc}"
    if (clash := _in_use(base)) is not None:
        logger.warning(
            "the user namespace's host ids %d-%d are in use: %s", base, base + COUNT - 1, clash
        )
    return ns, ""


def _read_only(path: Path) -> bool:
    """overlayfs mounts itself read-only, silently, when it cannot use its work dir."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _probe(ns: UserNamespace, home: Path, probe_dirs: Iterable[Path]) -> None:
    """Root of ``U`` writes, through bubblewrap, an overlay of idmapped layers made in ``home``."""
    for folder in probe_dirs:
        if folder.is_dir():
            with ns.staging() as stage:
                stage.idmap(folder, read_only=True)
    top = home / f".userns-probe-{secrets.token_hex(4)}"
    (top / "lower").mkdir(parents=True)
    try:
        with ns.staging() as stage:
            merged = stage.mount_point()
            with ns.staging() as layers:
                options = isolate.overlay_options(
                    *ns.overlay_layers(layers, [top / "lower"], top / "upper", top / "work")
                )
                mount = ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)]
                subprocess.run(mount, check=True, capture_output=True, timeout=20)
            if _read_only(merged):
                raise RuntimeError("an overlay over idmapped layers comes up read-only")
            bwrap = isolate.support().bwrap or "bwrap"
            argv = [
                bwrap,
                "--ro-bind",
                "/",
                "/",
                "--bind",
                str(merged),
                "/mnt",
                "--unshare-pid",
                "--die-with-parent",
                "/bin/sh",
                "-c",
                "touch /mnt/probe && test $(id -u) = 0",
            ]
            done = subprocess.run(ns.enter(argv), capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"a sandbox cannot write its overlay: {done.stderr.strip()[-300:]}")
        st = os.lstat(top / "upper" / "probe")
        if (st.st_uid, st.st_gid) != (0, 0):
            raise RuntimeError(
                f"a file root wrote in a sandbox is {st.st_uid}:{st.st_gid} on disk, not 0:0"
            )
    finally:
        shutil.rmtree(top, ignore_errors=True)
