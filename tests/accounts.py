"""Ordinary accounts for the rootless tests and benchmarks, made and removed by root.

``Account.create()`` adds a user with no password, no login shell, a private
home under ``/tmp`` and a range of 65,536 subordinate ids of its own (as
``useradd`` gives a new account on Debian); ``remove()`` kills its processes and
deletes it, its ids and its files. ``command()`` wraps a command line to run as
the account with this checkout in reach (``tests/as_account.py``).

Example::

    account = Account.create()
    subprocess.run(account.command(["id", "-u"]), env=account.env())
    account.remove()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AS_ACCOUNT = Path(__file__).with_name("as_account.py")
FIRST_SUBID = 300_000  # above what useradd gives people here, far below the root namespace's
SUBID_COUNT = 65536
TOOLS = ("useradd", "userdel", "usermod", "newuidmap", "newgidmap", "bwrap", "mmdebstrap")


def missing() -> str:
    """Why accounts cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "making accounts needs root"
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (scripts/system-deps)"
    from ketch.worker.rootless import userns_restrictions

    return userns_restrictions()  # an ordinary account could not have the sandbox here


def _free_subids() -> int:
    """The first multiple of 65,536 from FIRST_SUBID that no /etc/subuid or subgid range touches."""
    taken: list[tuple[int, int]] = []
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                taken.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    start = FIRST_SUBID
    while any(a < start + SUBID_COUNT and start < b for a, b in taken):
        start += SUBID_COUNT
    return start


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def create(cls, prefix: str = "kt", subids: bool = True) -> Account:
        """A new account; with ``subids=False`` it has no subordinate ids at all."""
        name = f"{prefix}{secrets.token_hex(4)}"
        home = Path(f"/tmp/{name}")
        run = lambda *argv: subprocess.run(argv, check=True, capture_output=True, timeout=30)  # noqa: E731
        # No automatic range: the explicit one below is chosen not to touch anyone's.
        run(
            "useradd",
            "-K",
            "SUB_UID_COUNT=0",
            "-K",
            "SUB_GID_COUNT=0",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            name,
        )
        if subids:
            first = _free_subids()
            last = first + SUBID_COUNT - 1
            ids = f"{first}-{last}"
            run("usermod", "--add-subuids", ids, "--add-subgids", ids, name)
        entry = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        return cls(name, entry.pw_uid, entry.pw_gid, home)

    def reach(self) -> list[str]:
        """What the account must be able to enter: Python, the virtualenv, the checkout."""
        return sorted({sys.base_prefix, sys.prefix, str(REPO)})

    def command(self, argv: list[str]) -> list[str]:
        reach = ":".join(self.reach())
        return [sys.executable, str(AS_ACCOUNT), str(self.uid), str(self.gid), reach, "--", *argv]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        for key in ("KETCH_IMAGE_CACHE", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "SUDO_USER"):
            env.pop(key, None)
        env.update(HOME=str(self.home), USER=self.name, LOGNAME=self.name)
        return env

    def write(self, relative: str, text: str) -> Path:
        """A file in the account's home, owned by it."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for part in [path, *path.relative_to(self.home).parents]:
            os.chown(self.home / part, self.uid, self.gid)
        return path

    def delegate_cgroups(self, parent: str) -> list[Path]:
        """Give the account a cgroup ``parent`` of its own, as an administrator would
        (v1: in each of the memory, cpu and pids hierarchies; v2: one group with those
        controllers turned on above it). Returns the groups, for :func:`undelegate`."""
        root = Path("/sys/fs/cgroup")
        made: list[Path] = []
        if (root / "cgroup.controllers").exists():  # unified (v2)
            wanted = {"memory", "cpu", "pids"} & set(
                (root / "cgroup.controllers").read_text().split()
            )
            for controller in sorted(wanted):
                with open(root / "cgroup.subtree_control", "w") as fh:
                    fh.write(f"+{controller}")
            groups, files = (
                [root / parent],
                ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads"),
            )
        else:
            groups = [
                root / c / parent
                for c in ("memory", "cpu", "pids")
                if (root / c / "tasks").exists()
            ]
            files = ("cgroup.procs", "tasks")
        for group in groups:
            group.mkdir()
            made.append(group)
            for path in (group, *(group / name for name in files)):
                os.chown(path, self.uid, self.gid)
        return made

    def remove(self) -> None:
        for _ in range(3):
            subprocess.run(["pkill", "-KILL", "-u", str(self.uid)], capture_output=True)
            time.sleep(0.2)
        subprocess.run(["userdel", self.name], capture_output=True, timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)
        for leftover in Path("/tmp").glob(f"ketch-{self.uid}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def undelegate(groups: list[Path]) -> None:
    """Remove delegated groups (their children first); the account's processes are gone."""
    for group in groups:
        for child in sorted(group.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            group.rmdir()
