"""Linux primitives shared by image builds and containers: overlayfs and bubblewrap.

A root filesystem is an overlay of read-only image layers (``lowers``, top
first) under a private writable ``upper``; bubblewrap then enters it with its
own mount, pid, ipc and uts namespaces. Both need root (or a user namespace
setup ketch does not do yet), which :func:`support` checks once.

Example::

    with_overlay = await mount_overlay([layer_b, layer_a], upper, work, merged)
    argv = Bwrap(merged).bind_ro("/host/lib", "/.ketch/lib").argv(["python3", "-c", "pass"])
    ...
    await unmount(merged)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Docker's default capability set: enough for package managers and servers,
# without CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE or module loading.
CONTAINER_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT",
    "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP",
)  # fmt: skip
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_OVERLAY_OPTIONS = 4000  # the kernel takes mount options up to one page


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
    if bwrap is None:
        return Support(False, "bubblewrap is not installed (apt-get install bubblewrap)", None)
    if os.geteuid() != 0:
        return Support(False, "the sandbox runtime needs root for overlay mounts", bwrap)
    try:
        with open("/proc/filesystems") as fh:
            if "overlay" not in fh.read():
                subprocess.run(["modprobe", "overlay"], capture_output=True, timeout=10)
    except OSError:
        pass
    probe = subprocess.run(
        [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--die-with-parent", "true"],
        capture_output=True,
        text=True,
        timeout=20,
    )
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
    await run_checked(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], "mount overlay")


async def unmount(merged: Path) -> None:
    """Detach ``merged`` (lazily, so a straggling process cannot keep it busy)."""
    with contextlib.suppress(Exception):
        proc = await asyncio.create_subprocess_exec(
            "umount", "-l", str(merged), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await proc.wait()


def unmount_sync(merged: Path) -> None:
    subprocess.run(["umount", "-l", str(merged)], capture_output=True)


async def run_checked(argv: Sequence[str], what: str, timeout: float = 60.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{what} timed out after {timeout:.0f}s") from None
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {text}")
    return text


@dataclass
class Bwrap:
    """A bubblewrap command line for a root filesystem at ``root``.

    ``builder=True`` keeps root's capabilities and the host network (image
    builds run package managers); containers get Docker's default capabilities.

    Example::

        argv = Bwrap(merged, hostname="c-1").bind_ro(src, "/.ketch/runtime").argv(["python3"])
    """

    root: Path
    builder: bool = False
    network: bool = True
    hostname: str | None = None
    cwd: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    _binds: list[str] = field(default_factory=list)

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
        args += ["--perms", "1777", "--tmpfs", "/tmp", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        if not self.network:
            args.append("--unshare-net")
        if self.hostname:
            args += ["--hostname", self.hostname]
        if not self.builder:
            args += ["--cap-drop", "ALL"]
            for cap in CONTAINER_CAPS:
                args += ["--cap-add", cap]
        args += self._binds
        args += ["--chdir", self.cwd, "--clearenv"]
        for key, value in {"PATH": DEFAULT_PATH, "HOME": "/root", **self.env}.items():
            args += ["--setenv", key, value]
        return [*args, "--", *command]
