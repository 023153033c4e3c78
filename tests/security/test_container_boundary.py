"""A container and an image build step hold: attacks on the kernel from inside the sandbox runtime.

One app run (one control plane, one image build, one container): the image's
``run_commands`` step tries to set the host's ``kernel.core_pattern`` (a
helper it names would then run as host root) and to make a user namespace, and
records its capabilities; the function, in a ``block_network=True`` container,
tries every attack of the kind issue 13 reported and a few normal things that
must keep working. The host's ``core_pattern`` is read before and after.
"""

from __future__ import annotations

import json
import os
import platform
import re
import uuid
from pathlib import Path

import pytest

FIRST_BUILD_S = 300  # a fresh machine builds the Debian base first (debootstrap)
pytestmark = pytest.mark.timeout(FIRST_BUILD_S + 120)

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
# Docker's default capabilities: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID,
# SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
DOCKER_DEFAULT_CAPS = "00000000a80425fb"

APP = r'''
import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
import threading

import ketch

TOKEN = "@TOKEN@"
STEP = (
    "{ grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status; "
    f"if echo ketch-{TOKEN}-core > /proc/sys/kernel/core_pattern; "
    "then echo core_pattern=written; else echo core_pattern=refused; fi; "
    "if unshare -U true; then echo unshare=ok; else echo unshare=refused; fi; "
    f"}} > /opt/{TOKEN}.txt 2>&1"
)
image = ketch.Image.debian_slim("3.11").run_commands(STEP)
app = ketch.App("security-boundary")

NUMBERS = {  # x86-64, aarch64
    "keyctl": (250, 219), "bpf": (321, 280), "perf_event_open": (298, 241),
    "clone": (56, 220), "clone3": (435, 435),
}
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def outcome(result):
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def syscall(name, *args):
    number = NUMBERS[name][0 if platform.machine() == "x86_64" else 1]
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    if name == "clone" and result == 0:
        os._exit(0)  # a child in a new user namespace: it must not exist, and must not linger
    if name == "clone" and result > 0:
        os.waitpid(result, 0)
    return outcome(result)


def read(path):
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        return sorted(os.listdir(path))
    try:
        with open(path, "rb") as fh:
            return fh.read(64).decode(errors="replace")
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))


def write(path, text):
    if not os.path.exists(path):
        return None
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
    return "written"


def open_for_writing(path):
    """Opening is enough to tell: a read-only mount refuses it (nothing is ever written)."""
    if not os.path.exists(path):
        return None
    try:
        os.close(os.open(path, os.O_WRONLY))
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
    return "opened"


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True).returncode


@app.function(image=image, block_network=True)
def attack() -> dict:
    with open("/proc/self/status") as fh:
        status = dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)
    in_thread = []
    worker = threading.Thread(target=lambda: in_thread.append(os.getpid()))
    worker.start()
    worker.join()
    x32 = None
    if platform.machine() == "x86_64":  # the x32 ABI's getpid: a foreign system call table
        x32 = run(sys.executable, "-c", "import ctypes; ctypes.CDLL(None).syscall(0x40000027)")
    with open(f"/tmp/{TOKEN}", "w") as fh:
        fh.write("tmp works")
    with open(f"/opt/{TOKEN}.txt") as fh:
        build_step = fh.read()
    return {
        "core_pattern": write("/proc/sys/kernel/core_pattern", f"|/tmp/{TOKEN}-helper"),
        "sysrq_trigger": open_for_writing("/proc/sysrq-trigger"),
        "proc_irq": open_for_writing("/proc/irq/default_smp_affinity"),
        "sys": open_for_writing("/sys/kernel/mm/transparent_hugepage/enabled"),
        "kcore": read("/proc/kcore"),
        "keys": read("/proc/keys"),
        "timer_list": read("/proc/timer_list"),
        "acpi": read("/proc/acpi"),
        "firmware": read("/sys/firmware"),
        "cgroup_fs": read("/sys/fs/cgroup"),
        "unshare_U": run("unshare", "-U", "true"),
        "unshare_r": run("unshare", "-r", "true"),
        "unshare_call": outcome(libc.unshare(CLONE_NEWUSER)),
        "clone_newuser": syscall("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
        "clone3": syscall("clone3", 0, 0),
        "mount_call": outcome(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)),
        "mount_cli": run("mount", "-t", "tmpfs", "none", "/mnt"),
        "keyctl": syscall("keyctl", 0, 0, 0, 0),
        "bpf": syscall("bpf", 0, 0, 0),
        "perf_event_open": syscall("perf_event_open", 0, 0, 0, 0, 0),
        "x32": x32,
        "subprocess": subprocess.run(["sh", "-c", "echo child"], capture_output=True, text=True).stdout,
        "thread": in_thread == [os.getpid()],
        "tmp": read(f"/tmp/{TOKEN}"),
        "hostname_sysctl": read("/proc/sys/kernel/hostname").strip() == os.uname().nodename,
        "net_conf": read("/proc/sys/net/ipv4/conf"),
        "cpus_online": read("/sys/devices/system/cpu/online"),
        "cap_eff": status["CapEff"].strip(),
        "seccomp": status["Seccomp"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "build_step": build_step,
    }


@app.local_entrypoint()
def main():
    print("BOUNDARY " + json.dumps(attack.remote()), flush=True)
'''


def _remove_own_layers(token: str) -> None:
    from ketch.images.layers import LayerStore

    root = Path(os.environ.get("KETCH_IMAGE_CACHE", "~/.cache/ketch/images")).expanduser()
    if not (root / "layers").is_dir():
        return
    store = LayerStore(root)
    for info in store.infos():
        if token in info.summary and store.path(info.hash).exists():
            store.remove(info.hash)


@pytest.fixture(scope="module")
def boundary(sandbox_env, tmp_path_factory) -> dict:
    token = f"kb{uuid.uuid4().hex[:12]}"
    app = tmp_path_factory.mktemp("boundary") / "boundary_app.py"
    app.write_text(APP.replace("@TOKEN@", token))
    before = CORE_PATTERN.read_text()
    try:
        proc = sandbox_env.cli("run", app, timeout=FIRST_BUILD_S)
    finally:
        after = CORE_PATTERN.read_text()
        if after != before:  # put the host back before anything else fails
            CORE_PATTERN.write_text(before)
        _remove_own_layers(token)
    found = re.search(r"^BOUNDARY (\{.*\})$", proc.stdout, re.M)
    assert found, proc.describe()
    return {**json.loads(found[1]), "host_core_pattern_changed": after != before}


def test_kernel_settings_are_read_only(boundary):
    assert not boundary["host_core_pattern_changed"]
    assert boundary["core_pattern"] == "EROFS"
    # Root of the user namespace is nobody to these host-root files: the permission
    # check refuses (EACCES) before the read-only mount would (EROFS, as host root).
    refused = ("EROFS", "EACCES")
    assert boundary["proc_irq"] in refused and boundary["sys"] in (*refused, None)
    assert boundary["sysrq_trigger"] in (*refused, None)  # None: this kernel has no sysrq


def test_kernel_internals_are_masked(boundary):
    assert boundary["kcore"] in ("", None) and boundary["keys"] in ("", None)
    assert boundary["timer_list"] in ("", None)
    assert boundary["acpi"] in ([], None) and boundary["firmware"] in ([], None)
    assert boundary["cgroup_fs"] in ([], None)  # the host's cgroup tree (other containers)


def test_no_user_namespaces_or_mounts(boundary):
    assert boundary["unshare_U"] != 0 and boundary["unshare_r"] != 0
    assert boundary["unshare_call"] == "EPERM" and boundary["clone_newuser"] == "EPERM"
    assert boundary["clone3"] == "ENOSYS"  # so libc falls back to clone, which seccomp can read
    assert boundary["mount_call"] == "EPERM" and boundary["mount_cli"] != 0


def test_dangerous_system_calls_are_refused(boundary):
    assert boundary["keyctl"] == boundary["bpf"] == boundary["perf_event_open"] == "EPERM"
    if platform.machine() == "x86_64":
        assert boundary["x32"] == -31  # killed by SIGSYS


def test_normal_work_still_works(boundary):
    assert boundary["subprocess"] == "child\n" and boundary["thread"] is True
    assert boundary["tmp"] == "tmp works"
    # /proc/sys answers for the container's own namespaces
    assert boundary["hostname_sysctl"] is True
    assert boundary["net_conf"] == ["all", "default", "lo"]  # block_network: its own network
    assert boundary["cpus_online"]  # a read-only /sys, as Docker's, for libraries that count CPUs
    assert boundary["cap_eff"] == DOCKER_DEFAULT_CAPS
    assert boundary["seccomp"] == "2" and boundary["no_new_privs"] == "1"


def test_build_steps_run_in_the_same_sandbox(boundary):
    step = dict(line.split("=", 1) for line in boundary["build_step"].splitlines() if "=" in line)
    assert step == {"core_pattern": "refused", "unshare": "refused"}, boundary["build_step"]
    assert f"CapEff:\t{DOCKER_DEFAULT_CAPS}" in boundary["build_step"]
    assert "Seccomp:\t2" in boundary["build_step"] and "NoNewPrivs:\t1" in boundary["build_step"]
