"""Sandbox containers forked from their function's warm template (issue 20), end to end.

A container of a sandbox-runtime function is a fork of a template process that
lives inside a sandbox like the function's (``ketch.guest.zygote``); the fork
makes its own user, mount, pid, ipc and uts namespaces, writable layer, ``/proc``,
``/dev`` and ``/tmp`` and drops to Docker's capabilities and seccomp filter before
its code runs. Tried here from inside the containers: two running at once see
none of each other's files or processes, and none of the template's; a fork can
neither mount nor make namespaces; it sees only its own cgroup and runs as the
image's user.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import time

import pytest
from ketch_testing import SHOW, ExampleRun

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

APP = SHOW + textwrap.dedent(
    """
    import ctypes, os, time
    import ketch

    app = ketch.App("forks-e2e")
    img = ketch.image.default_image()
    user_img = img.run_commands("useradd -u 1234 -m runner").dockerfile_commands(["USER runner"])
    libc = ctypes.CDLL(None, use_errno=True)

    def status():
        with open("/proc/self/status") as fh:
            rows = dict(line.split(":", 1) for line in fh if ":" in line)
        return {k: rows[k].strip() for k in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp")}

    @app.function(image=img)
    def writer():
        for path in ("/etc/from-writer", "/tmp/from-writer", "/dev/shm/from-writer", "/root/w"):
            with open(path, "w") as fh:
                fh.write("secret")
        time.sleep(6)
        return os.getpid()

    @app.function(image=img)
    def reader():
        time.sleep(2)  # the writer has written by now, and still runs
        procs = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    procs[pid] = fh.read().replace(b"\\0", b" ").decode().strip()
        seen = [p for p in ("/etc/from-writer", "/tmp/from-writer", "/dev/shm/from-writer", "/root/w")
                if os.path.exists(p)]
        mount = libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None)
        mount_errno = ctypes.get_errno()
        unshare = libc.unshare(0x10000000 | 0x00020000)  # a user and a mount namespace
        with open("/proc/self/cgroup") as fh:
            cgroup = fh.read()
        return {
            "pid": os.getpid(),
            "procs": procs,
            "seen": seen,
            # The template's mount points are in its root, so in a fork's: nothing is on them.
            "template_paths": [
                line.split()[4] for line in open("/proc/self/mountinfo")
                if line.split()[4].startswith(("/.ketch/lower", "/.ketch/w", "/.ketch/fork", "/.ketch/seccomp"))
            ] + [top for top, _, files in os.walk("/.ketch/w") if files],
            "mount": [mount, mount_errno],
            "unshare": unshare,
            "status": status(),
            "cgroups": sorted({line.split(":", 2)[2].strip() for line in cgroup.splitlines()}),
            "writable": open("/etc/mine", "w").write("ok"),
        }

    @app.function(image=user_img)
    def as_user():
        return os.getuid(), os.getgid(), status()["CapEff"], os.path.expanduser("~")

    @app.local_entrypoint()
    def main():
        w = writer.spawn()
        show("reader", lambda: reader.remote())
        show("writer", lambda: w.get())
        show("again", lambda: reader.remote()["seen"])
        show("user", lambda: as_user.remote())
    """
)


def test_forked_containers_see_nothing_of_each_other_or_the_template(sandbox_env, tmp_path):
    (tmp_path / "forks_app.py").write_text(APP)
    run = ExampleRun.parse(sandbox_env.cli("run", tmp_path / "forks_app.py", timeout=400))
    run.proc.check()
    got = run.value("reader")
    # A fork: pid 1 of a pid namespace of its own, where only its own processes show.
    assert got["pid"] == 1, got
    assert all("ketch.guest" in cmd for cmd in got["procs"].values()), got["procs"]
    assert len(got["procs"]) <= 3, got["procs"]
    assert run.value("writer") == 1
    # The writer's files, in its root, /tmp, /dev/shm and /root, are its own.
    assert got["seen"] == [] and run.value("again") == [], got
    assert got["template_paths"] == [], got
    # No mounts, no namespaces: Docker's capabilities, no_new_privs and the full filter.
    assert got["mount"] == [-1, 1] and got["unshare"] == -1, got
    assert got["status"]["CapEff"] == "00000000a80425fb", got["status"]
    assert got["status"]["CapBnd"] == "00000000a80425fb", got["status"]
    assert got["status"]["NoNewPrivs"] == "1" and got["status"]["Seccomp"] == "2", got["status"]
    # A cgroup namespace rooted at its own cgroup (the worker moved it there first).
    assert got["cgroups"] == ["/"] and got["writable"] == 2, got
    # The image's USER: its ids, no capabilities.
    uid, gid, caps, home = run.value("user")
    assert (uid, gid, caps, home) == (1234, 1234, "0000000000000000", "/home/runner")


SNAP_APP = SHOW + textwrap.dedent(
    """
    import os, threading, time
    import ketch

    app = ketch.App("snapshots-e2e")
    VERSION = "v1"

    def reach_the_witness():
        # What the template's code (a snap hook) can make of the unmasked /proc the worker
        # mounted under /.ketch/w: its listing, a look inside, a umount of the cover, and the
        # same umount from a user namespace of its own (its filter lets it make one).
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            listing = os.listdir("/.ketch/w")
        except OSError as exc:
            listing = type(exc).__name__
        seen = [listing, os.path.exists("/.ketch/w/proc/self"), libc.umount2(b"/.ketch/w", 2)]
        pid = os.fork()
        if pid == 0:
            if libc.unshare(0x10000000 | 0x00020000) != 0:  # user + mount namespace
                os._exit(3)
            libc.umount2(b"/.ketch/w", 2)
            os._exit(1 if os.path.exists("/.ketch/w/proc/self") else 0)
        seen.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        return seen

    @app.cls(enable_memory_snapshot=True)
    class Model:
        @ketch.enter(snap=True)
        def load(self):
            print("SNAP HOOK RAN", VERSION, flush=True)
            self.stamp = time.time_ns()
            self.model = bytearray(32 << 20)  # shared, copy-on-write, by every fork
            self.witness = reach_the_witness()


        @ketch.enter(snap=False)
        def after(self):
            self.after = time.time_ns()

        @ketch.method()
        def info(self, i):
            time.sleep(1.0)  # several containers at once
            return [
                self.stamp, self.after > self.stamp, os.environ["KETCH_CONTAINER_ID"], VERSION,
                self.witness,
            ]

    @app.cls(enable_memory_snapshot=True)
    class Threads:
        @ketch.enter(snap=True)
        def start(self):
            threading.Thread(target=time.sleep, args=(60,), daemon=True, name="poller").start()

        @ketch.method()
        def ok(self):
            return "ran"

    @app.local_entrypoint()
    def main():
        show("info", lambda: list(Model().info.map(range(6))))
        show("threads", lambda: Threads().ok.remote())
    """
)


def test_a_memory_snapshot_is_taken_once_and_rebuilt_for_new_code(sandbox_env, tmp_path):
    """The snap hook runs once, in the template; each container forks from it and runs
    its snap=False hook. New code takes a new snapshot. A snap hook that starts a thread
    gets the documented error, and the class still runs, without the snapshot."""
    app = tmp_path / "snap_app.py"
    app.write_text(SNAP_APP)
    run = ExampleRun.parse(sandbox_env.cli("run", app, timeout=400))
    run.proc.check()
    info = run.value("info")
    assert len({row[2] for row in info}) >= 2, info  # several containers...
    assert len({row[0] for row in info}) == 1, info  # ...from one snapshot
    assert all(row[1] for row in info) and {row[3] for row in info} == {"v1"}, info
    # The template's own code (the snap hooks) cannot reach the unmasked /proc under its
    # cover, directly or from a user namespace of its own.
    assert info[0][4] == ["PermissionError", False, -1, 0], info[0][4]
    out = run.proc.stdout + run.proc.stderr
    assert out.count("SNAP HOOK RAN v1") == 1, out
    assert "[snapshot] taken in" in out, out
    assert run.value("threads") == "ran"
    assert (
        "[snapshot] not taken: the memory snapshot cannot be taken: threads were started (poller)"
        in out
    ), out

    app.write_text(SNAP_APP.replace('VERSION = "v1"', 'VERSION = "v2"'))
    again = ExampleRun.parse(sandbox_env.cli("run", app, timeout=400))
    again.proc.check()
    info2 = again.value("info")
    assert {row[3] for row in info2} == {"v2"} and len({row[0] for row in info2}) == 1, info2
    assert info2[0][0] != info[0][0]
    assert (again.proc.stdout + again.proc.stderr).count("SNAP HOOK RAN v2") == 1


LIMITS_APP = SHOW + textwrap.dedent(
    """
    import time
    import ketch

    app = ketch.App("fork-limits-e2e")

    @app.function()
    def warm():
        return "warm"

    @app.function(memory=(128, 128))  # a request and a hard limit
    def hog():
        blocks = [bytearray(16 << 20) for _ in range(40)]  # 640 MiB, over its 128
        return len(blocks)

    @app.local_entrypoint()
    def main():
        show("warm", lambda: warm.remote())
        time.sleep(1.5)  # the template forks its spare meanwhile
        show("hog", lambda: hog.remote())
    """
)


def test_a_spare_fork_takes_its_containers_limits(sandbox_env, tmp_path):
    """A container made from a spare fork (forked ahead of need, before its function was
    known) gets its function's memory limit when it becomes that container."""
    (tmp_path / "limits_app.py").write_text(LIMITS_APP)
    run = ExampleRun.parse(sandbox_env.cli("run", tmp_path / "limits_app.py", timeout=300))
    assert run.value("warm") == "warm"
    assert "ran out of memory (limit 128 MiB)" in run.entry("hog").get("error", ""), run.entry(
        "hog"
    )


DURABLE_APP = textwrap.dedent(
    """
    import sys, time
    import ketch

    app = ketch.App("snapshot-kill9")

    @app.cls(enable_memory_snapshot=True, retries=0)
    class Slow:
        @ketch.enter(snap=True)
        def load(self):
            self.base = 1000

        @ketch.method()
        def work(self, x):
            time.sleep(4)
            return self.base + x

    if __name__ == "__main__":
        work = ketch.Cls.from_name("snapshot-kill9", "Slow")().work
        if sys.argv[1] == "spawn":
            for x in range(3):
                print("CALL", x, work.spawn(x).object_id, flush=True)
        else:
            for call_id in sys.argv[2:]:
                print("RESULT", call_id, ketch.FunctionCall.from_id(call_id).get(timeout=120))
    """
)


@pytest.mark.timeout(400)
def test_calls_on_containers_from_a_snapshot_survive_a_control_plane_kill9(tmp_path):
    """``kill -9`` of the control plane while containers forked from a snapshot run calls:
    the containers (and their template) go with it, as fresh ones do, and after a restart
    every call is answered, from a new snapshot, even with ``retries=0``."""
    from ketch_testing import pid_alive, wait_until

    with _own_sandbox_env() as env:
        home = env.home
        (tmp_path / "durable.py").write_text(DURABLE_APP)
        env.cli("deploy", tmp_path / "durable.py", timeout=200).check()
        spawned = env.python(str(tmp_path / "durable.py"), "spawn", timeout=200).check()
        ids = [line.split()[2] for line in spawned.stdout.splitlines() if line.startswith("CALL")]
        assert len(ids) == 3, spawned.describe()
        time.sleep(1.5)  # running, in containers forked from the snapshot
        pid = env.server_pid()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 10)
        env.cli("server", "start", timeout=60)
        got = env.python(str(tmp_path / "durable.py"), "get", *ids, timeout=250).check()
        for x, call_id in enumerate(ids):
            assert f"RESULT {call_id} {1000 + x}" in got.stdout, got.describe()
        assert "started from its memory snapshot" in (home / "server.log").read_text()


@contextlib.contextmanager
def _own_sandbox_env(**extra: str):
    """A sandbox-runtime control plane of the test's own (it may be killed, or have GPUs)."""
    import shutil
    import tempfile
    from pathlib import Path

    from ketch_testing import KetchEnv

    from ketch.worker import isolate

    if not isolate.support().ok:
        pytest.skip(f"the sandbox runtime cannot run here: {isolate.support().reason}")
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-fk-", dir="/tmp"))
    env = KetchEnv(home)
    env.env.update({"KETCH_RUNTIME": "sandbox", "KETCH_LOG_LEVEL": "INFO", **extra})
    try:
        yield env
    finally:
        env.close()
        shutil.rmtree(home, ignore_errors=True)


GPU_APP = SHOW + textwrap.dedent(
    """
    import os
    import ketch

    app = ketch.App("gpu-snapshot-e2e")

    @app.cls(gpu="A10G", enable_memory_snapshot=True)
    class OnGpu:
        @ketch.enter(snap=True)
        def load(self):
            self.at_snapshot = os.environ.get("CUDA_VISIBLE_DEVICES")

        @ketch.enter(snap=False)
        def attach(self):
            self.after = os.environ.get("CUDA_VISIBLE_DEVICES")

        @ketch.method()
        def seen(self):
            return [self.at_snapshot, self.after, os.getpid()]

    @app.local_entrypoint()
    def main():
        show("seen", lambda: OnGpu().seen.remote())
    """
)


@pytest.mark.timeout(300)
def test_a_gpu_functions_snapshot_is_taken_before_its_gpu_is_attached(tmp_path):
    """As Modal's: the snap hooks see no GPU; the container forked from the snapshot sees
    the one it owns (a fake A10G here: no device nodes to bind on this machine)."""
    with _own_sandbox_env(KETCH_FAKE_GPUS="A10G:1") as env:
        (tmp_path / "gpu_app.py").write_text(GPU_APP)
        run = ExampleRun.parse(env.cli("run", tmp_path / "gpu_app.py", timeout=250))
        run.proc.check()
        assert run.value("seen") == ["", "0", 1]
        assert "started from its memory snapshot" in (env.home / "server.log").read_text()
