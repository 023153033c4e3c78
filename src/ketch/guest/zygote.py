"""A warm template inside a function's sandbox that forks its containers.

The ``sandbox`` runtime starts one per function shape (:mod:`ketch.worker.forks`):
a bubblewrap sandbox like a container's (the image, the app's source, the
sockets, Docker's capabilities), whose process has imported ketch and the
container loop and waits for spawn requests. A container is a fork of it that,
before any of its own code runs, makes itself a container:

1. it enters new user, mount, ipc and uts namespaces (and a network namespace
   where the template has no network) and a new pid namespace for its child;
   the template writes its user mapping (the template's own ids, one to one);
2. it mounts a tmpfs for its writable layer (``ephemeral_disk`` bounds it), an
   overlay of the template's root (``/.ketch/lower``) under it, and binds what the
   template was given (the ketch bundle, the sockets, the source, ``/sys``) into
   that root; ``/dev`` is made anew from the template's device nodes, with its own
   ``/dev/pts`` and ``/dev/shm``;
3. its child, pid 1 of the new pid namespace, mounts a ``/proc`` of its own with
   runc's read-only and masked paths, a fresh ``/tmp``, takes its hostname, moves
   into the new root (``pivot_root``) and drops the old one;
4. it tells the worker its pid (``SCM_CREDENTIALS``: the worker moves it into
   the container's cgroup) and waits for the go-ahead, which brings what makes it
   this container (its ids, token, Secrets, hostname: the template never holds
   them, and a worker may fork a spare ahead of need), enters a cgroup namespace
   rooted there, keeps only Docker's capabilities, sets ``no_new_privs``, loads the
   full seccomp filter (on top of the template's looser one), takes the image's
   user and runs the container loop.

Nothing one fork writes is seen by another or by the template; a fork sees none
of the others' processes. The kernel lets a user namespace mount a ``/proc`` only
while an unmasked one is mounted somewhere in its mount namespace: the worker
mounts one under ``/.ketch/w`` and covers it with an empty read-only tmpfs before
the template starts, so no code here can reach it.

The template never starts a thread, so forking it is safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Collection
from typing import Any

import ketch  # noqa: F401 - imported for its warm modules, which every fork inherits
import ketch.guest.loop as container_loop
from ketch.guest.template import serve

LOWER = "/.ketch/lower"
FORK = "/.ketch/fork"
ROOT = FORK + "/root"
OLD = "/.ketch/old"
SECCOMP_FILE = "/.ketch/seccomp.bpf"
SPAWN = "/.ketch/spawn"
SPECIAL = ("/", "/proc", "/tmp", "/dev", LOWER, FORK, "/.ketch/w", SECCOMP_FILE, SPAWN)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP = 0x02000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 22, 2, 47, 4
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
CAPSET = {"x86_64": 126, "aarch64": 91}
CAP_VERSION_3 = 0x20080522
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class ForkSetupError(RuntimeError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise ForkSetupError(f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            src.encode() if src else None,
            dst.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {fstype or src} at {dst}",
    )


# -- in the fork, before its namespaces have a root of their own -------------------------


def _top_mounts() -> list[str]:
    """The template's mount points directly on its root, other than the ones a fork makes
    anew (their order in the mount table: a later one may sit inside an earlier one)."""
    rows = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split(" ", 5)
            rows.append((fields[0], fields[1], _unescape(fields[4])))
    root_id = next(mid for mid, _parent, point in rows if point == "/")
    return [
        point
        for _mid, parent, point in rows
        if parent == root_id
        and point not in SPECIAL
        and not any(point.startswith(s + "/") for s in SPECIAL if s != "/")
    ]


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), path)


def _make_root(cfg: dict[str, Any], req: dict[str, Any]) -> None:
    """The fork's own root under :data:`ROOT`: a writable layer over the template's."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    layer = req.get("upper")  # its scratch disk, bound into the template's spawn area
    if not layer:  # none on this machine: a tmpfs, bounded the same
        disk = int(req.get("disk_mib") or 0)
        size = f",size={disk}m" if disk else ""
        _mount("tmpfs", FORK, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755" + size)
        layer = FORK
        for name in ("upper", "work", "root"):
            os.mkdir(f"{FORK}/{name}")
            os.chmod(f"{FORK}/{name}", 0o755)  # the new root's own mode (whatever the umask)
    _mount(
        "overlay",
        ROOT,
        "overlay",
        0,
        f"lowerdir={LOWER},upperdir={layer}/upper,workdir={layer}/work,userxattr",
    )
    for point in _top_mounts():
        _mount(point, ROOT + point, None, MS_BIND | MS_REC)
    # /dev anew: the device nodes the template has, its own ptys and shared memory.
    dev = ROOT + "/dev"
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for name in DEV_NODES:
        if os.path.exists(f"/dev/{name}"):
            os.close(os.open(f"{dev}/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
            _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{dev}/{name}")
    for path, is_dir in req.get("devices") or []:  # its GPUs' nodes: the worker binds them
        where = dev + path[len("/dev") :]
        if is_dir:
            os.makedirs(where, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(where), exist_ok=True)
            os.close(os.open(where, os.O_CREAT | os.O_WRONLY, 0o666))
    for name in ("pts", "shm"):
        os.mkdir(f"{dev}/{name}", 0o755)
        os.chmod(f"{dev}/{name}", 0o755)
    _mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
    )
    _mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def _finish_root(cfg: dict[str, Any], req: dict[str, Any]) -> None:
    """In pid 1 of the fork's pid namespace: its /proc and /tmp, then into the new root."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _mount("proc", ROOT + "/proc", "proc", flags)
    for path in cfg["read_only"]:
        where = ROOT + path
        if os.path.exists(where):
            _mount(where, where, None, MS_BIND | MS_REC)
            _mount(None, where, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
    for path in cfg["masked"]:
        where = ROOT + path
        if not path.startswith("/proc/") or not os.path.exists(where):
            continue  # /sys's came with the template's /sys
        if os.path.isdir(where):
            _mount("tmpfs", where, "tmpfs", MS_RDONLY | flags, "size=0")
        else:
            _mount("/dev/null", where, None, MS_BIND)
    tmp = int(req.get("tmp_mib") or 0)
    _mount(
        "tmpfs",
        ROOT + "/tmp",
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"mode=1777,size={tmp}m" if tmp else "mode=1777",
    )
    os.makedirs(ROOT + OLD, exist_ok=True)
    os.chdir(ROOT)
    _check(_libc.syscall(PIVOT_ROOT[platform.machine()], b".", OLD[1:].encode()), "pivot_root")
    _check(_libc.umount2(OLD.encode(), 2), "detach the template's root")
    os.rmdir(OLD)
    os.chdir(req.get("cwd") or "/")


def _lock_down(cfg: dict[str, Any], req: dict[str, Any], program: bytes) -> None:
    """Docker's capabilities, ``no_new_privs``, the full seccomp filter, the image's user."""
    keep = set(cfg["caps"])
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last = int(fh.read())
    for cap in range(last + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    mask = [0, 0]
    for cap in keep:
        mask[cap // 32] |= 1 << (cap % 32)
    header = struct.pack("Ii", CAP_VERSION_3, 0)
    data = struct.pack("6I", mask[0], mask[0], 0, mask[1], mask[1], 0)  # none inheritable
    hbuf, dbuf = ctypes.create_string_buffer(header), ctypes.create_string_buffer(data)
    _check(_libc.syscall(CAPSET[platform.machine()], hbuf, dbuf), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    filt = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(filt))
    fbuf = ctypes.create_string_buffer(fprog)
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fbuf, 0, 0), "seccomp")
    user = str(req.get("user") or "")
    if user and user not in ("root", "0", "0:0"):
        import grp
        import pwd

        name, _, group = user.partition(":")
        try:
            entry: pwd.struct_passwd | None = (
                pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
            )
        except KeyError:
            if not name.isdigit():
                raise
            entry = None  # a uid the image does not name
        uid = entry.pw_uid if entry else int(name)
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        else:
            gid = entry.pw_gid if entry else uid
        if entry is not None:
            os.initgroups(entry.pw_name, gid)
        else:
            os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)


def _lo_up() -> None:
    """Bring up the loopback of a new network namespace."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP


def _fork_child(
    cfg: dict[str, Any], req: dict[str, Any], fds: list[int], sync: tuple[int, int], program: bytes
) -> None:
    """The fork: its namespaces and root, then its pid 1 runs the container."""
    out_w, err_w, handshake = fds
    ready_w, go_r = sync
    marks = [("forked", time.monotonic())]
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
        if cfg.get("own_network"):
            flags |= CLONE_NEWNET
        _check(_libc.unshare(flags), "unshare")
        os.write(ready_w, b"u")
        if os.read(go_r, 1) != b"m":
            raise ForkSetupError("the template did not map the fork's user namespace")
        os.close(ready_w)
        os.close(go_r)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        if cfg.get("own_network"):
            _lo_up()
        marks.append(("namespaces", time.monotonic()))
        _make_root(cfg, req)
        marks.append(("root", time.monotonic()))
        pid = os.fork()
        if pid == 0:
            _container(cfg, req, out_w, err_w, handshake, program, marks)
        for fd in (out_w, err_w, handshake):
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        os._exit(
            os.waitstatus_to_exitcode(status) & 0xFF
            if os.WIFEXITED(status)
            else 128 + os.WTERMSIG(status)
        )
    except BaseException:
        with open(err_w, "w", closefd=False) as err:
            err.write("ketch: the container could not be forked:\n" + traceback.format_exc())
        os._exit(70)


def _container(
    cfg: dict[str, Any],
    req: dict[str, Any],
    out_w: int,
    err_w: int,
    handshake: int,
    program: bytes,
    marks: list[tuple[str, float]],
) -> None:
    """Pid 1 of the fork's pid namespace: finish its root, lock down, check in, run."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        marks.append(("pid 1", time.monotonic()))
        _finish_root(cfg, req)
        marks.append(("proc, pivot", time.monotonic()))
        sock = socket.socket(fileno=handshake)
        creds = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        note = b"r" + json.dumps(marks).encode()
        sock.sendmsg([note], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
        go = _read_go(sock)
        if go is None:
            os._exit(0)  # the worker gave it up
        sock.close()
        hostname = str(go.get("hostname") or "")
        if hostname:
            _check(_libc.sethostname(hostname.encode(), len(hostname.encode())), "sethostname")
        # In its cgroup now: a cgroup namespace rooted there, as bubblewrap gives a container.
        _check(_libc.unshare(CLONE_NEWCGROUP), "unshare the cgroup namespace")
        _lock_down(cfg, req, program)
        os.setsid()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        err_w = 2
        os.closerange(3, 65536)
        os.environ.clear()
        os.environ.update(cfg["env"])
        os.environ.update(go["env"])  # its own: ids, token, Secrets (never the template's)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
    except BaseException:
        with open(err_w, "w", closefd=False) as err:
            err.write("ketch: the container could not be forked:\n" + traceback.format_exc())
        os._exit(70)
    code = 0
    try:
        container_loop.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)


def _read_go(sock: socket.socket) -> dict[str, Any] | None:
    """The worker's go-ahead: ``b"g"``, a 4-byte length, then JSON ``{"env", "hostname"}``
    (the container's identity, given only now); None if the worker gave the fork up."""
    data = b""
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[1:5], "big"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            return None
        data += chunk
        if data[:1] != b"g":
            return None
    return dict(json.loads(data[5:]))


# -- the template ------------------------------------------------------------------------


def _map_user(pid: int) -> None:
    """Map the fork's new user namespace onto the template's ids, one to one."""
    for kind in ("uid", "gid"):
        with open(f"/proc/self/{kind}_map") as fh:
            count = sum(int(line.split()[2]) for line in fh if line.strip())
        with open(f"/proc/{pid}/{kind}_map", "w") as fh:
            fh.write(f"0 0 {min(count, 65536)}\n")


def _spawn(
    cfg: dict[str, Any], req: dict[str, Any], fds: list[int], program: bytes, keep: list[int]
) -> int:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (*keep, ready_r, go_w):
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _fork_child(cfg, req, fds, (ready_w, go_r), program)
    os.close(ready_w)
    os.close(go_r)
    try:
        if select.select([ready_r], [], [], 10)[0] and os.read(ready_r, 1) == b"u":
            _map_user(pid)
            os.write(go_w, b"m")
    finally:
        os.close(ready_r)
        os.close(go_w)
    return pid


def _prepare(req: dict[str, Any], fds: list[int], keep: list[int]) -> dict[str, Any]:
    """A memory snapshot: import the user's module and run its ``@enter(snap=True)``
    hooks here, once, with the function's environment; their output goes to ``fds``.
    Refused (with the cause) where the state cannot be forked safely."""
    from ketch._serialization import unpack
    from ketch._spec import FunctionSpec
    from ketch.guest import user_code

    saved = os.dup(1), os.dup(2)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    started = time.monotonic()
    try:
        os.environ.update(req["env"])
        spec = FunctionSpec.from_wire(req["spec"])
        params = unpack(req["params"]) if req.get("params") else None
        user_code.SNAPSHOT = user_code.prepare_snapshot(spec, params)
        problem = fork_hazards(keep)
        if problem:
            user_code.SNAPSHOT = None
            return {"t": "prepare_failed", "error": problem}
        return {"t": "prepared", "ms": (time.monotonic() - started) * 1000}
    except BaseException as exc:  # noqa: BLE001 - reported; the worker drops this template
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "AuthError":
            error = (
                "a snap=True hook (or the module's import) called the control plane, which a "
                "snapshot has no token for: Dicts, Queues, Volumes' API and other functions "
                f"belong in @enter(snap=False) hooks ({error})"
            )
        return {"t": "prepare_failed", "error": error}
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, *fds):
            os.close(fd)


def fork_hazards(keep: list[int], threads_before: Collection[Any] = ()) -> str:
    """What in this process a fork cannot carry safely, in words ("" when nothing):
    Python threads (a fork has only the thread that forked), CUDA (never forked) and open
    network connections (every fork would share them)."""
    import threading

    problems = []
    others = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and t not in threads_before
    ]
    if others:
        problems.append(
            f"threads were started ({', '.join(sorted(others))}): a forked container would "
            "have none of them; start them in an @enter(snap=False) hook"
        )
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if (cuda is not None and getattr(cuda, "is_initialized", lambda: False)()) or _gpu_open(keep):
        problems.append(
            "CUDA was initialised: GPU state is never in a snapshot; move GPU work to an "
            "@enter(snap=False) hook"
        )
    sockets = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if int(name) not in keep and os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                sockets.append(int(name))
    if sockets:
        problems.append(
            f"{len(sockets)} network connection(s) or socket(s) are open: every container "
            "forked from the snapshot would share them; open them in an @enter(snap=False) hook"
        )
    if not problems:
        return ""
    return "the memory snapshot cannot be taken: " + "; ".join(problems)


def _gpu_open(keep: list[int]) -> bool:
    """Whether this process has a GPU open (a CUDA context, whichever library made it):
    a descriptor on an NVIDIA device node, or the driver's library mapped."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            if int(name) not in keep and os.readlink(f"/proc/self/fd/{name}").startswith(
                "/dev/nvidia"
            ):
                return True
    with contextlib.suppress(OSError), open("/proc/self/maps") as fh:
        return any("libcuda.so" in line for line in fh)
    return False


def main() -> None:
    cfg = json.loads(os.environ.pop("KETCH_ZYGOTE", "{}"))
    cfg["env"] = {k: v for k, v in os.environ.items() if k != "KETCH_TEMPLATE_FD"}
    sock = socket.socket(fileno=int(os.environ.pop("KETCH_TEMPLATE_FD")))
    with open(cfg["seccomp"], "rb") as fh:
        program = fh.read()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.makedirs(ROOT, exist_ok=True)

    def handle(req: dict[str, Any], fds: list[int], keep: list[int]) -> dict[str, Any]:
        if req["t"] == "prepare":
            return _prepare(req, fds, keep)
        pid = _spawn(cfg, req, fds, program, keep)
        for fd in fds:
            os.close(fd)
        return {"t": "spawned", "id": req["id"], "pid": pid}

    serve(sock, 3, handle)


if __name__ == "__main__":
    main()
