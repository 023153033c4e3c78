"""Linux primitives shared by image builds and containers: overlayfs and bubblewrap.

A root filesystem is an overlay of read-only image layers (``lowers``, top
first) under a private writable ``upper``; bubblewrap then enters it with its
own mount, pid, ipc and uts namespaces. Both need root, which :func:`support`
checks once; bubblewrap then runs as root of the node's user namespace where
there is one (:mod:`ketch.worker.userns`, which idmaps the layers).

Every sandbox, a container's or an image build step's, gets the same kernel
boundary, Docker's defaults (docs/security.md, "Containers"): its capabilities
with ``no_new_privs``, runc's read-only and masked kernel paths
(:func:`kernel_paths`) and the seccomp filter of :mod:`ketch.worker.seccomp`.

Example::

    with_overlay = await mount_overlay([layer_b, layer_a], upper, work, merged)
    with Bwrap(merged).bind_ro("/host/lib", "/.ketch/lib") as box:
        proc = subprocess.Popen(box.argv(["python3", "-c", "pass"]), pass_fds=box.pass_fds)
    ...
    await unmount(merged)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from . import rootless, seccomp

# Docker's default capability set: enough for package managers and servers,
# without CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE or module loading.
CONTAINER_CAPS = {  # name: number (linux/capability.h)
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
# runc's defaults, which Docker uses: kernel files a container may read but not write...
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# ...and ones it may not read at all: a file reads as empty (/dev/null), a directory is empty.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
# Where hosts mount kernel filesystems under the host trees a sandbox sees. Covered even
# when nothing is mounted there now: bubblewrap's mounts are slaves of the host's, so a
# mount the host makes later (binfmt_misc's automount, say) would appear in running sandboxes.
KERNEL_MOUNT_POINTS = (
    "/proc/sys/fs/binfmt_misc",
    "/proc/fs/nfsd",
    "/sys/fs/bpf",
    "/sys/fs/cgroup",
    "/sys/fs/fuse/connections",
    "/sys/fs/pstore",
    "/sys/fs/selinux",
    "/sys/kernel/config",
    "/sys/kernel/debug",
    "/sys/kernel/security",
    "/sys/kernel/tracing",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_OVERLAY_OPTIONS = 4000  # the kernel takes mount options up to one page
MNT_DETACH = 2


@dataclass(frozen=True)
class Support:
    """Whether this machine can run isolated containers, and why not."""

    ok: bool
    reason: str
    bwrap: str | None


@functools.cache
def support() -> Support:
    """Check for bubblewrap, root and overlayfs once per process.

    Example: ``if not support().ok: print(support().reason)``.
    """
    bwrap = shutil.which("bwrap")
    if os.geteuid() != 0:  # root of its own user namespace otherwise (worker/rootless.py)
        state = rootless.state()
        why = state.why_not if state is not None else "the control plane is not in a user namespace"
        return Support(False, why, bwrap)
    if bwrap is None:
        return Support(False, "bubblewrap is not installed (apt-get install bubblewrap)", None)
    try:
        with open("/proc/filesystems") as fh:
            if "overlay" not in fh.read():
                subprocess.run(["modprobe", "overlay"], capture_output=True, timeout=10)
    except OSError:
        pass
    for attempt in range(3):
        probe = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--die-with-parent", "true"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        # Binding the whole tree races with mounts going away meanwhile (another control
        # plane's scratch disks): that is not a machine without bubblewrap.
        if probe.returncode == 0 or "No such file or directory" not in probe.stderr:
            break
        time.sleep(0.2 * (attempt + 1))
    if probe.returncode != 0:
        return Support(False, f"bubblewrap cannot start here: {probe.stderr.strip()}", bwrap)
    return Support(True, "", bwrap)


def overlay_options(lowers: Sequence[Path], upper: Path | None, work: Path | None) -> str:
    """The ``-o`` string for an overlay mount; raises ``ValueError`` when it is too long."""
    if not lowers:
        raise ValueError("an overlay needs at least one lower layer")
    options = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work}"
    if rootless.current() is not None:
        # Mounted in a user namespace, overlayfs may not use trusted.* xattrs: its
        # opaque directories are marked with user.overlay.* ones instead.
        options += ",userxattr"
    if len(options) > MAX_OVERLAY_OPTIONS:
        raise ValueError(
            f"the image has too many layers ({len(lowers)}) to mount; combine some steps"
        )
    return options


async def mount_overlay(
    lowers: Sequence[Path], upper: Path, work: Path, merged: Path, extra: str = ""
) -> None:
    """Mount ``lowers`` (top first) with a writable ``upper`` at ``merged``; ``extra``: more ``-o`` options."""
    for path in (upper, work, merged):
        path.mkdir(parents=True, exist_ok=True)
    options = overlay_options(lowers, upper, work) + (f",{extra}" if extra else "")
    # mount(2) itself: starting mount(8) cost a few ms of every container's cold start.
    if libc().mount(b"overlay", os.fsencode(merged), b"overlay", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise RuntimeError(
            f"mount overlay at {merged} failed: {os.strerror(err)} (the kernel log says more)"
        )


def probe_overlay(lower_parent: Path, upper_parent: Path) -> str:
    """Whether an overlay with a lower dir in ``lower_parent`` and its upper in
    ``upper_parent`` mounts and takes a write here; "" when it does, else why not.

    A rootless control plane checks its image cache and home once at start:
    some filesystems (NFS, another overlay) refuse overlays in a user namespace.
    """
    made: list[Path] = []
    try:
        lower = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=_made(lower_parent)))
        top = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=_made(upper_parent)))
        made += [lower, top]
        merged = top / "merged"
        for path in (top / "upper", top / "work", merged):
            path.mkdir()
        options = overlay_options([lower], top / "upper", top / "work")
        if libc().mount(b"overlay", os.fsencode(merged), b"overlay", 0, options.encode()) != 0:
            err = ctypes.get_errno()
            return (
                f"overlayfs cannot mount here ({lower_parent}, {upper_parent}): {os.strerror(err)}"
            )
        try:
            (merged / "probe").write_text("ok")
        finally:
            unmount_sync(merged)
        return ""
    except OSError as exc:
        return f"overlayfs does not work here: {exc}"
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def unmount(merged: Path) -> None:
    """Detach ``merged`` (lazily, so a straggling process cannot keep it busy)."""
    unmount_sync(merged)


def unmount_sync(merged: Path) -> None:
    """:func:`unmount` for blocking code: ``umount -l``, quietly (nothing mounted is fine)."""
    libc().umount2(os.fsencode(merged), MNT_DETACH)


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, for mount system calls (``syscall`` returns a long)."""
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib


def mount_points(top: str | Path) -> list[str]:
    """This process's mount points at or under ``top``, from ``/proc/self/mountinfo``."""
    prefix, found = str(top).rstrip("/"), []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split(" ", 5)[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def kernel_paths() -> list[str]:
    """bubblewrap options that leave ``/sys`` and ``/proc`` as runc leaves a container's.

    ``/proc`` is the sandbox's own (``--proc``); the read-only paths are bound over it
    from the host's ``/proc`` (bubblewrap has no way to name the new one as a source),
    whose sysctl files answer for the namespaces of the process that reads them: a
    sandbox with its own network sees its own ``net.*``. ``/sys`` is the host's,
    read-only, as Docker's own sysfs instance shows the same devices; every kernel
    filesystem the host mounts below these trees (cgroups, debugfs, bpffs,
    binfmt_misc, ...) is covered by an empty read-only tmpfs. Paths this kernel lacks
    are skipped. Read each time: the host's mounts may change.

    Example: ``["--ro-bind", "/sys", "/sys", "--ro-bind", "/proc/sys", "/proc/sys", ...]``.
    """
    args = ["--ro-bind", "/sys", "/sys"] if os.path.isdir("/sys") else []
    for path in READ_ONLY_PATHS:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    candidates = (*MASKED_PATHS, *KERNEL_MOUNT_POINTS, *_host_mounts_below())
    hidden = [path for path in candidates if os.path.exists(path)]
    for path in sorted(set(hidden)):
        if any(path.startswith(other + "/") for other in hidden):
            continue  # inside a directory that is covered already
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--dev-bind", "/dev/null", path]
    return args


def _host_mounts_below() -> list[str]:
    """The host's mount points inside ``/sys`` and the read-only ``/proc`` paths."""
    return [p for tree in ("/sys", *READ_ONLY_PATHS) for p in mount_points(tree) if p != tree]


def as_user(user: object, command: Sequence[str]) -> list[str]:
    """``command`` run as an image's ``USER`` (``uid[:gid]``) inside a sandbox; as it is for root."""
    if not user or str(user) in ("root", "0", "0:0"):
        return list(command)
    uid, _, gid = str(user).partition(":")
    return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--init-groups", *command]


@dataclass
class Bwrap:
    """A bubblewrap command line for a root filesystem at ``root``.

    Containers and image build steps (which keep the host network for package
    managers) get the same sandbox: Docker's default capabilities with
    ``no_new_privs``, runc's read-only and masked kernel paths, and the seccomp
    filter. :meth:`argv` opens a pipe that carries the filter to bubblewrap:
    start the command with ``pass_fds=box.pass_fds``, then :meth:`close` (or use
    ``with``). Forgetting ``pass_fds`` fails closed: bubblewrap refuses to start.

    Example::

        with Bwrap(merged, hostname="c-1").bind_ro(src, "/.ketch/bundle") as box:
            proc = subprocess.Popen(box.argv(["python3"]), pass_fds=box.pass_fds)
    """

    root: Path
    network: bool = True
    hostname: str | None = None
    cwd: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    tmp_size_mib: int | None = (
        None  # a bound on /tmp (a tmpfs: its pages count as the container's memory)
    )
    forking: bool = False  # a fork template's filter (seccomp.FORK_ALLOWED)
    _binds: list[str] = field(default_factory=list)
    pass_fds: list[int] = field(default_factory=list, init=False)

    def bind_ro(self, src: str | Path, dest: str) -> Bwrap:
        self._binds += ["--ro-bind", str(src), dest]
        return self

    def bind_rw(self, src: str | Path, dest: str) -> Bwrap:
        self._binds += ["--bind", str(src), dest]
        return self

    def bind_dev(self, src: str | Path, dest: str) -> Bwrap:
        self._binds += ["--dev-bind", str(src), dest]
        return self

    def argv(self, command: Sequence[str]) -> list[str]:
        bwrap = support().bwrap or "bwrap"
        args = [bwrap, "--bind", str(self.root), "/", "--dev", "/dev", "--proc", "/proc"]
        if self.tmp_size_mib:
            args += ["--size", str(self.tmp_size_mib << 20)]
        args += [
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
        ]
        args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        if not self.network:
            args.append("--unshare-net")
        if self.hostname:
            args += ["--hostname", self.hostname]
        args += ["--cap-drop", "ALL"]
        for cap in CONTAINER_CAPS:
            args += ["--cap-add", cap]
        args += self._binds
        args += kernel_paths()  # after the binds, so that none of them can uncover a path
        self.pass_fds.append(seccomp.program_fd(self.forking))
        args += ["--seccomp", str(self.pass_fds[-1])]
        args += ["--chdir", self.cwd, "--clearenv"]
        for key, value in {"PATH": DEFAULT_PATH, "HOME": "/root", **self.env}.items():
            args += ["--setenv", key, value]
        return [*args, "--", *command]

    def close(self) -> None:
        """Close the descriptors :meth:`argv` opened, once the command has started."""
        while self.pass_fds:
            os.close(self.pass_fds.pop())

    def __enter__(self) -> Bwrap:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
