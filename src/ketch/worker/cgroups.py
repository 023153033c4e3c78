"""Per-container resource limits with Linux cgroups (v1, hybrid or v2).

The container runtime puts each container in its own group so that its
``memory`` (bytes), ``cpu`` (cores) and pids limits are enforced by the kernel,
and so that an out-of-memory kill can be told apart from any other SIGKILL.

Layout: ``<controller root>/<parent>/<name>``, for example
``/sys/fs/cgroup/memory/ketch/c-123`` on cgroup v1 (one directory per
hierarchy) or ``/sys/fs/cgroup/ketch/c-123`` on cgroup v2. On v2 the parent
never holds processes itself ("no internal processes" rule), so the
controllers can be enabled in its ``cgroup.subtree_control``.

Example::

    support = detect()
    print(support.describe())            # "cgroup v1: memory, cpu, pids limits enforced"
    cg = ContainerCgroup.create("c-123", memory_limit_bytes=512 * 2**20, cpu_limit=1.5,
                                pids_limit=256, support=support)
    proc = subprocess.Popen(join_command(cg, ["python", "-m", "ketch.guest"]))
    proc.wait()
    if cg.oom_killed():
        print("out of memory")
    cg.remove()

Everything here needs root (or a delegated v2 subtree); :func:`detect` says
what works on this machine and why the rest does not.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import rootless

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/fs/cgroup"
CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses smaller CFS quotas

# Files whose presence in a fresh child group shows that a limit can be set there.
_V1_PROBE_FILES = {
    "memory": "memory.limit_in_bytes",
    "cpu": "cpu.cfs_quota_us",
    "pids": "pids.max",
}
_V2_PROBE_FILES = {"memory": "memory.max", "cpu": "cpu.max", "pids": "pids.max"}

_SEGMENT = re.compile(r"^[A-Za-z0-9_.@:+-]+$")


class CgroupError(RuntimeError):
    """A group could not be created, limited, joined or read.

    Example::

        try:
            ContainerCgroup.create("c-1", memory_limit_bytes=2**30)
        except CgroupError as e:
            print(e)   # "cannot apply the memory limit: ... (not root)"
    """


@dataclass(frozen=True)
class Support:
    """What cgroup limits this machine can enforce.

    ``roots`` maps each usable controller to the directory its hierarchy is
    mounted at (on v2 they all share one directory).

    Example::

        Support(version="none", controllers=frozenset(), reason="not root").describe()
        # "cgroups unavailable (not root): memory, cpu and pids limits are NOT enforced"
    """

    version: str
    controllers: frozenset[str]
    reason: str = ""
    roots: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def root_of(self, controller: str) -> str | None:
        """The directory of ``controller``'s hierarchy, or None when it is not usable."""
        for name, path in self.roots:
            if name == controller and controller in self.controllers:
                return path
        return None

    def describe(self) -> str:
        """One line for ``ketch server status``."""
        enforced = [c for c in CONTROLLERS if c in self.controllers]
        missing = [c for c in CONTROLLERS if c not in self.controllers]
        why = f" ({self.reason})" if self.reason else ""
        if self.version == "none" or not enforced:
            return f"cgroups unavailable{why}: {_join_words(missing)} limits are NOT enforced"
        line = f"cgroup {self.version}: {', '.join(enforced)} limits enforced"
        if missing:
            line += f"; {_join_words(missing)} limits are NOT enforced{why}"
        return line


def _join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class _Mount:
    path: str
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: frozenset[str]  # v1 super options: the controllers bound to it


def _unescape_mount_path(raw: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw)


def _cgroup_mounts(root: str) -> list[_Mount]:
    """cgroup mounts at or below ``root``, from /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts: list[_Mount] = []
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        pre_fields, post_fields = pre.split(), post.split()
        if len(pre_fields) < 5 or len(post_fields) < 3:
            continue
        fstype = post_fields[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        path = _unescape_mount_path(pre_fields[4])
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            continue
        mounts.append(_Mount(path, fstype, frozenset(post_fields[2].split(","))))
    return mounts


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(value)


def _not_root() -> str:
    mapping = rootless.current()
    if os.geteuid() != 0 or mapping is not None:
        user = mapping.user if mapping is not None else str(os.getuid())
        return f"not root, and no cgroup is delegated to {user}"
    return ""


def _explain(err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _not_root() or f"permission denied: {err.strerror}"
    return err.strerror or str(err)


def _probe_child(directory: str, probe_file: str) -> str:
    """Create and remove a throwaway child of ``directory``; "" when that works, else why not."""
    if not os.access(directory, os.W_OK):
        return _not_root() or f"{directory} is not writable"
    child = os.path.join(directory, f"ketch-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(child)
    except OSError as e:
        return f"cannot create a group in {directory}: {_explain(e)}"
    try:
        if not os.path.exists(os.path.join(child, probe_file)):
            return f"{probe_file} is missing (kernel built without this limit?)"
        return ""
    finally:
        try:
            os.rmdir(child)
        except OSError as e:
            logger.debug("could not remove probe group %s: %s", child, e)


def _enable_v2_controller(directory: str, controller: str) -> None:
    """Enable ``controller`` for the children of the v2 group ``directory``."""
    control = os.path.join(directory, "cgroup.subtree_control")
    if controller in _read(control).split():
        return
    if controller not in _read(os.path.join(directory, "cgroup.controllers")).split():
        raise CgroupError(
            f"cannot enable the {controller} controller in {directory}: it is not in "
            "cgroup.controllers there (not delegated by the parent group)"
        )
    try:
        _write(control, f"+{controller}")
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise CgroupError(
                f"cannot enable the {controller} controller in {directory}: the group holds "
                "processes of its own (cgroup v2 'no internal processes' rule); run ketch "
                "from a cgroup with a dedicated subtree"
            ) from e
        raise CgroupError(
            f"cannot enable the {controller} controller in {directory}: {_explain(e)}"
        ) from e


def _probe_or_delegated(path: str, parent: str | None, probe_file: str) -> str:
    """Probe ``path``; failing that, ``path/parent`` when an administrator delegated it
    (made it and gave it to this account: the account may then make groups under it)."""
    why = _probe_child(path, probe_file)
    if why and parent and os.path.isdir(os.path.join(path, parent)):
        if not _probe_child(os.path.join(path, parent), probe_file):
            return ""
    return why


def _detect_v1(mounts: list[_Mount], parent: str | None = None) -> Support:
    roots: list[tuple[str, str]] = []
    usable: set[str] = set()
    reasons: list[str] = []
    for controller in CONTROLLERS:
        candidates = [m.path for m in mounts if m.fstype == "cgroup" and controller in m.options]
        if not candidates:
            reasons.append(f"no v1 {controller} hierarchy mounted")
            continue
        path = min(candidates, key=len)
        why = _probe_or_delegated(path, parent, _V1_PROBE_FILES[controller])
        if why:
            reasons.append(why if why == _not_root() else f"{controller}: {why}")
            continue
        roots.append((controller, path))
        usable.add(controller)
    return _support("v1", usable, reasons, roots)


def _detect_v2(path: str, parent: str | None = None) -> Support:
    try:
        available = set(_read(os.path.join(path, "cgroup.controllers")).split())
    except OSError as e:
        return Support("none", frozenset(), f"cannot read {path}/cgroup.controllers: {_explain(e)}")
    reasons: list[str] = []
    wanted = [c for c in CONTROLLERS if c in available]
    reasons += [f"v2 {c} controller not available" for c in CONTROLLERS if c not in available]
    if not wanted:
        return _support("v2", set(), reasons, [])
    why = _probe_or_delegated(path, parent, "cgroup.procs")
    if why:
        return _support("v2", set(), [*reasons, why], [])
    delegated = bool(_probe_child(path, "cgroup.procs"))  # the probe passed only under parent
    usable: set[str] = set()
    for controller in wanted:
        try:
            # A delegated parent has the controllers its administrator enabled above it;
            # this account turns them on for its own children.
            _enable_v2_controller(
                os.path.join(path, parent) if delegated and parent else path, controller
            )
        except (CgroupError, OSError) as e:
            reasons.append(str(e))
            continue
        usable.add(controller)
    return _support("v2", usable, reasons, [(c, path) for c in sorted(usable)])


def _support(
    version: str, usable: set[str], reasons: list[str], roots: Iterable[tuple[str, str]]
) -> Support:
    unique = list(dict.fromkeys(reasons))
    return Support(
        version=version if usable else "none",
        controllers=frozenset(usable),
        reason="; ".join(unique),
        roots=tuple(roots),
    )


def detect(root: str = DEFAULT_ROOT, parent: str | None = None) -> Support:
    """Find out which limits can be enforced, by trying (nothing is cached).

    A throwaway child group is created and removed in each hierarchy; on v2 the
    controllers are enabled in the root's ``cgroup.subtree_control``.

    Example::

        >>> detect().describe()
        'cgroup v1: memory, cpu, pids limits enforced'
    """
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        return Support("none", frozenset(), f"no cgroup filesystem at {root}")
    mounts = _cgroup_mounts(root)
    if not mounts:
        # No mount table (or root is not a mount point): recognise the layout by its files.
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            mounts = [_Mount(root, "cgroup2", frozenset())]
        else:
            mounts = [
                _Mount(os.path.join(root, c), "cgroup", frozenset({c}))
                for c in CONTROLLERS
                if os.path.exists(os.path.join(root, c, "cgroup.procs"))
            ]
    if any(m.fstype == "cgroup2" and m.path == root for m in mounts):
        return _detect_v2(root, parent)  # unified mode
    v1 = [m for m in mounts if m.fstype == "cgroup" and m.options & set(CONTROLLERS)]
    if v1:
        return _detect_v1(v1, parent)
    unified = [m.path for m in mounts if m.fstype == "cgroup2"]
    if unified:
        return _detect_v2(min(unified, key=len), parent)
    return Support("none", frozenset(), f"no cgroup hierarchy mounted under {root}")


# --------------------------------------------------------------------------- groups


def _check_name(name: str, what: str, *, nested: bool = False) -> None:
    segments = name.split("/") if nested else [name]
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise ValueError(
                f"invalid cgroup {what} {name!r}: use letters, digits and _.@:+-"
                + (" (with / between levels)" if nested else "")
            )


def _pids_in(directory: str) -> list[int]:
    try:
        text = _read(os.path.join(directory, "cgroup.procs"))
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _read_int(path: str) -> int | None:
    try:
        text = _read(path).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_keyed(path: str) -> dict[str, int]:
    """Parse a flat ``key value`` file such as memory.events or memory.oom_control."""
    try:
        text = _read(path)
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


@dataclass
class ContainerCgroup:
    """One container's group, present in every usable controller hierarchy.

    Build it with :meth:`create`; always :meth:`remove` it afterwards.

    Example::

        cg = ContainerCgroup.create("c-1", pids_limit=64, support=detect())
        cg.join(pid)
        ...
        cg.remove()
    """

    name: str
    version: str
    paths: dict[str, str]  # controller -> group directory
    memory_limit_bytes: int | None = None
    cpu_limit: float | None = None
    pids_limit: int | None = None

    @classmethod
    def create(
        cls,
        name: str,
        *,
        memory_limit_bytes: int | None = None,
        cpu_limit: float | None = None,
        pids_limit: int | None = None,
        parent: str = "ketch",
        support: Support | None = None,
    ) -> ContainerCgroup:
        """Create ``<root>/<parent>/<name>`` in each usable hierarchy and apply the limits.

        The group is created even with no limit, so that usage can be measured.
        Raises :class:`CgroupError` when a requested limit cannot be applied, and
        ``ValueError`` for a bad name or limit. Nothing is left behind on error.

        Example::

            cg = ContainerCgroup.create("c-1", memory_limit_bytes=256 * 2**20, cpu_limit=0.5)
        """
        _check_name(name, "name")
        _check_name(parent, "parent", nested=True)
        if memory_limit_bytes is not None and memory_limit_bytes <= 0:
            raise ValueError(f"memory limit must be positive, got {memory_limit_bytes} bytes")
        if cpu_limit is not None and not cpu_limit > 0:
            raise ValueError(f"cpu limit must be a positive number of cores, got {cpu_limit}")
        if pids_limit is not None and pids_limit <= 0:
            raise ValueError(f"pids limit must be positive, got {pids_limit}")
        support = support if support is not None else detect()
        requested = {
            "memory": memory_limit_bytes is not None,
            "cpu": cpu_limit is not None,
            "pids": pids_limit is not None,
        }
        for controller, wanted in requested.items():
            if wanted and controller not in support.controllers:
                raise CgroupError(
                    f"cannot apply the {controller} limit: the cgroup {controller} controller "
                    f"is not usable here ({support.reason or 'not detected'})"
                )
        if not support.controllers:
            raise CgroupError(f"cgroups unavailable ({support.reason or 'not detected'})")

        paths: dict[str, str] = {}
        for controller in CONTROLLERS:
            root = support.root_of(controller)
            if root is not None:
                paths[controller] = os.path.join(root, parent, name)
        cg = cls(
            name=name,
            version=support.version,
            paths=paths,
            memory_limit_bytes=memory_limit_bytes,
            cpu_limit=cpu_limit,
            pids_limit=pids_limit,
        )
        try:
            cg._make_directories(support, parent)
            cg._apply_limits()
        except BaseException:
            cg.remove()
            raise
        return cg

    def _make_directories(self, support: Support, parent: str) -> None:
        for controller, directory in self.paths.items():
            try:
                if self.version == "v2":
                    # Enable the controller at every level from the root down to the group.
                    level = support.root_of(controller) or ""
                    for segment in [*parent.split("/"), self.name]:
                        _enable_v2_controller(level, controller)
                        level = os.path.join(level, segment)
                        os.makedirs(level, exist_ok=True)
                else:
                    os.makedirs(directory, exist_ok=True)
            except OSError as e:
                raise CgroupError(f"cannot create cgroup {directory}: {_explain(e)}") from e

    def _set(self, controller: str, filename: str, value: str, what: str) -> None:
        path = os.path.join(self.paths[controller], filename)
        try:
            _write(path, value)
        except OSError as e:
            raise CgroupError(f"cannot apply the {what} ({filename}={value}): {_explain(e)}") from e

    def _has(self, controller: str, filename: str) -> bool:
        return os.path.exists(os.path.join(self.paths[controller], filename))

    def _apply_limits(self) -> None:
        v2 = self.version == "v2"
        if self.memory_limit_bytes is not None:
            limit = str(self.memory_limit_bytes)
            what = f"memory limit of {self.memory_limit_bytes} bytes"
            if v2:
                self._set("memory", "memory.max", limit, what)
                if self._has("memory", "memory.swap.max"):
                    self._set("memory", "memory.swap.max", "0", "no-swap rule")
            else:
                # memsw (memory + swap) may never be below the memory limit: lift it first.
                memsw = self._has("memory", "memory.memsw.limit_in_bytes")
                if memsw:
                    self._set("memory", "memory.memsw.limit_in_bytes", "-1", what)
                self._set("memory", "memory.limit_in_bytes", limit, what)
                if memsw:
                    self._set("memory", "memory.memsw.limit_in_bytes", limit, what)
        if self.cpu_limit is not None:
            quota = max(MIN_CPU_QUOTA_US, int(self.cpu_limit * CPU_PERIOD_US))
            what = f"cpu limit of {self.cpu_limit} cores"
            if v2:
                self._set("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}", what)
            else:
                self._set("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US), what)
                self._set("cpu", "cpu.cfs_quota_us", str(quota), what)
        if self.pids_limit is not None:
            self._set("pids", "pids.max", str(self.pids_limit), f"pids limit of {self.pids_limit}")

    def limit(self, memory_limit_bytes: int | None, cpu_limit: float | None) -> None:
        """Apply memory and CPU limits to a group made without them (a spare fork's)."""
        self.memory_limit_bytes, self.cpu_limit = memory_limit_bytes, cpu_limit
        pids, self.pids_limit = self.pids_limit, None  # set at creation
        try:
            self._apply_limits()
        finally:
            self.pids_limit = pids

    def directories(self) -> list[str]:
        """The group's directories, one per hierarchy (v2: exactly one)."""
        return list(dict.fromkeys(self.paths.values()))

    def procs_files(self) -> list[str]:
        """Every ``cgroup.procs`` a pid must be written to, to be fully in the group."""
        return [os.path.join(d, "cgroup.procs") for d in self.directories()]

    def join(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group in every hierarchy."""
        for path in self.procs_files():
            try:
                _write(path, str(pid))
            except OSError as e:
                raise CgroupError(f"cannot move pid {pid} into {path}: {_explain(e)}") from e

    def pids(self) -> list[int]:
        """The processes in the group (in any of its hierarchies), sorted."""
        found: set[int] = set()
        for directory in self.directories():
            found.update(_pids_in(directory))
        return sorted(found)

    def oom_killed(self) -> bool:
        """Whether the kernel OOM killer has killed a process of this group."""
        directory = self.paths.get("memory")
        if directory is None:
            return False
        if self.version == "v2":
            return _read_keyed(os.path.join(directory, "memory.events")).get("oom_kill", 0) > 0
        control = _read_keyed(os.path.join(directory, "memory.oom_control"))
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        # Kernels before 4.13 have no oom_kill counter: hitting the limit hard is the best hint.
        failcnt = _read_int(os.path.join(directory, "memory.failcnt")) or 0
        peak = _read_int(os.path.join(directory, "memory.max_usage_in_bytes")) or 0
        limit = self.memory_limit_bytes
        return failcnt > 0 and limit is not None and peak >= limit * 0.95

    def memory_peak_bytes(self) -> int | None:
        """The most memory the group has used, or None when the kernel does not say."""
        return self._memory_file("memory.peak", "memory.max_usage_in_bytes")

    def memory_bytes(self) -> int | None:
        """The memory the group uses now, or None when the kernel does not say."""
        return self._memory_file("memory.current", "memory.usage_in_bytes")

    def _memory_file(self, v2: str, v1: str) -> int | None:
        directory = self.paths.get("memory")
        if directory is None:
            return None
        return _read_int(os.path.join(directory, v2 if self.version == "v2" else v1))

    def cpu_seconds(self) -> float | None:
        """The CPU time the group's processes have used, or None when unreadable."""
        if self.version == "v2":
            directory = self.paths.get("cpu") or next(iter(self.paths.values()), None)
            if directory is None:
                return None
            usec = _read_keyed(os.path.join(directory, "cpu.stat")).get("usage_usec")
            return None if usec is None else usec / 1e6
        directory = self.paths.get("cpuacct") or self.paths.get("cpu")
        nsec = _read_int(os.path.join(directory, "cpuacct.usage")) if directory else None
        if nsec is not None:
            return nsec / 1e9
        # No cpuacct group (v1 with cpuacct mounted apart): the group's processes' own times
        # and their waited-for children's, from /proc.
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the group until it is empty (or ``timeout`` passes).

        Processes forked while the kill is under way are caught by the next round.
        """
        deadline = time.monotonic() + timeout
        directories = self.directories()
        kill_file = os.path.join(directories[0], "cgroup.kill") if directories else ""
        use_kill_file = self.version == "v2" and bool(kill_file) and os.path.exists(kill_file)
        delay = 0.001
        while True:
            pids = self.pids()
            if not pids:
                return
            if use_kill_file:
                try:
                    _write(kill_file, "1")
                except OSError as e:
                    logger.debug("cgroup.kill failed for %s: %s", kill_file, e)
                    use_kill_file = False
            if not use_kill_file:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if time.monotonic() >= deadline:
                logger.debug(
                    "cgroup %s still has processes %s after %.1fs", self.name, pids, timeout
                )
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def remove(self) -> None:
        """Kill what is left in the group and delete it everywhere. Idempotent; never raises."""
        try:
            self.kill_all()
        except Exception as e:  # removal must never fail the caller
            logger.debug("killing the processes of cgroup %s failed: %s", self.name, e)
        for directory in self.directories():
            _rmdir_quietly(directory)


def _rmdir_quietly(directory: str, attempts: int = 20) -> bool:
    """rmdir a group, retrying briefly while its last processes exit. True when it is gone."""
    for attempt in range(attempts):
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == attempts - 1:
                logger.debug("could not remove cgroup %s: %s", directory, e)
                return False
            time.sleep(0.01)
    return False


def join_command(cg: ContainerCgroup, argv: list[str]) -> list[str]:
    """An argv that moves itself into ``cg`` and then execs ``argv``.

    The process is in the group before the real program starts, so nothing it
    allocates escapes the limits. Paths and ``argv`` travel as positional
    parameters of the shell, never as script text, so any argv is safe.
    It exits 125 if the group cannot be joined.

    Example::

        subprocess.Popen(join_command(cg, ["python", "-c", "print('hi')"]))
    """
    if not argv:
        raise ValueError("join_command needs a program to run")
    files = cg.procs_files()
    script = (
        'n=$1; shift; while [ "$n" -gt 0 ]; do '
        'echo $$ > "$1" || { echo "ketch: cannot join cgroup $1" >&2; exit 125; }; '
        "shift; n=$((n - 1)); done; "
        'exec "$@"'
    )
    return ["/bin/sh", "-c", script, "ketch-cgroup-join", str(len(files)), *files, *argv]


def cap_parent(
    memory_limit_bytes: int, parent: str = "ketch", support: Support | None = None
) -> str | None:
    """Cap the memory of every group under ``parent`` together; returns why not, or None.

    Containers with no ``memory=`` of their own then still cannot take the
    host's memory: over the cap the kernel kills inside ``parent`` (a
    container), never the control plane, which lives outside it.

    Example::

        problem = cap_parent(20 * 2**30, support=detect())
    """
    _check_name(parent, "parent", nested=True)
    if memory_limit_bytes <= 0:
        raise ValueError(f"memory cap must be positive, got {memory_limit_bytes} bytes")
    support = support if support is not None else detect()
    root = support.root_of("memory")
    if root is None:
        return f"no usable memory controller ({support.reason or 'not detected'})"
    level = root
    try:
        for segment in parent.split("/"):
            if support.version == "v2":
                _enable_v2_controller(level, "memory")
            level = os.path.join(level, segment)
            os.makedirs(level, exist_ok=True)
        if support.version == "v2":
            _write(os.path.join(level, "memory.max"), str(memory_limit_bytes))
        else:
            _write(os.path.join(level, "memory.limit_in_bytes"), str(memory_limit_bytes))
    except (OSError, CgroupError) as e:
        return f"cannot cap {level}: {e}"
    return None


def host_memory_bytes() -> int:
    """MemTotal of this machine (0 when /proc/meminfo cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def default_containers_cap(total: int) -> int:
    """What containers may use together: the host's memory less max(1 GiB, 10%) for everything else."""
    return max(256 << 20, total - max(1 << 30, total // 10))


def cleanup_stale(
    parent: str = "ketch", support: Support | None = None, *, remove_parent: bool = False
) -> int:
    """Remove empty leftover groups under ``parent`` (after a crash). Returns how many.

    Groups that still hold processes are left alone. With ``remove_parent`` the
    parent itself is removed too when it ends up empty.

    Example::

        removed = cleanup_stale(support=detect())
    """
    _check_name(parent, "parent", nested=True)
    support = support if support is not None else detect()
    removed: set[str] = set()
    roots = list(dict.fromkeys(path for _, path in support.roots))
    for root in roots:
        base = os.path.join(root, parent)
        try:
            children = [e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            logger.debug("cannot list %s: %s", base, e)
            continue
        for child in children:
            directory = os.path.join(base, child)
            if _pids_in(directory):
                logger.debug("leaving cgroup %s: it still has processes", directory)
                continue
            if _rmdir_quietly(directory, attempts=1):
                removed.add(child)
        if remove_parent:
            _rmdir_quietly(base, attempts=1)
    return len(removed)
