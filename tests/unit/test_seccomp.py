"""The seccomp program, decoded and run by a small classic-BPF interpreter written here.

The interpreter uses its own opcode and return constants (linux/filter.h,
linux/seccomp.h), not the module's, so a wrong constant there shows up here.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from ketch.worker import seccomp
from ketch.worker.isolate import CONTAINER_CAPS, Bwrap

X86_64, AARCH64 = 0xC000003E, 0xC00000B7
I386, ARM, X32_BIT = 0x40000003, 0x40000028, 0x40000000
ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38
CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD_FLAGS, SIGCHLD = 0x10000000, 0x40000000, 0x3D0F00, 17

# x86-64 and aarch64 numbers of calls the filter allows, from the kernel headers.
ALLOWED = {
    "read": (0, 63),
    "write": (1, 64),
    "openat": (257, 56),
    "futex": (202, 98),
    "execve": (59, 221),
    "mmap": (9, 222),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "adjtimex": (159, 171),
    "chroot": (161, 51),
    "name_to_handle_at": (303, 264),
    "setuid": (105, 146),
    "rseq": (334, 293),
    "pidfd_open": (434, 434),
    "fchmodat2": (452, 452),
    "mseal": (462, 462),
}
ARCHES = [(X86_64, 0), (AARCH64, 1)]


def run(program: bytes, arch: int, nr: int, *args: int) -> int:
    """What the kernel would return for a call: classic BPF as seccomp runs it."""
    data = struct.pack("<II Q 6Q", nr & 0xFFFFFFFF, arch, 0, *(list(args) + [0] * 6)[:6])
    code = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            assert k % 4 == 0 and k + 4 <= len(data), f"load outside seccomp_data at {pc}"
            acc, pc = struct.unpack_from("<I", data, k)[0], pc + 1
        elif op == 0x05:  # BPF_JMP | BPF_JA
            pc += 1 + k
        elif op in (0x15, 0x25, 0x35, 0x45):  # JEQ, JGT, JGE, JSET with a constant
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += 1 + (jt if taken else jf)
        elif op == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc}")


@pytest.fixture(scope="module")
def program() -> bytes:
    return seccomp.program()


def test_program_is_well_formed(program):
    assert len(program) % 8 == 0 and 0 < len(program) // 8 <= 4096  # BPF_MAXINSNS
    assert len(program) < 4096  # one atomic pipe write (PIPE_BUF)
    code = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    assert code[0] == (0x20, 0, 0, 4)  # the first thing it reads is the architecture
    for pc, (op, jt, jf, k) in enumerate(code):
        target = pc + 1 + k if op == 0x05 else pc + 1 + max(jt, jf)
        assert op == 0x06 or target < len(code), f"instruction {pc} jumps out of the program"
    assert code[-1][0] == 0x06
    assert seccomp.program() is program  # compiled once per process


@pytest.mark.parametrize("arch,column", ARCHES)
def test_allowed_calls_pass(program, arch, column):
    for name, numbers in ALLOWED.items():
        assert run(program, arch, numbers[column]) == ALLOW, name


@pytest.mark.parametrize("arch,column", ARCHES)
def test_docker_denied_calls_fail_with_eperm(program, arch, column):
    for name, numbers in seccomp.DENIED.items():
        if numbers[column] is not None:
            assert run(program, arch, numbers[column]) == EPERM, name


@pytest.mark.parametrize("arch,column", ARCHES)
def test_every_other_known_number_is_allowed(program, arch, column):
    decided = {n[column] for n in (*seccomp.DENIED.values(), *seccomp.SPECIAL.values())}
    for nr in range(seccomp.HIGHEST_KNOWN + 1):
        if nr not in decided:
            assert run(program, arch, nr, 0) == ALLOW, nr


@pytest.mark.parametrize("arch,column", ARCHES)
def test_clone_with_new_namespaces_is_refused(program, arch, column):
    clone = seccomp.SPECIAL["clone"][column]
    assert run(program, arch, clone, SIGCHLD) == ALLOW  # fork
    assert run(program, arch, clone, CLONE_THREAD_FLAGS) == ALLOW  # a thread
    assert run(program, arch, clone, 1 << 32 | SIGCHLD) == ALLOW  # the kernel ignores the high half
    assert run(program, arch, clone, CLONE_NEWUSER | SIGCHLD) == EPERM
    assert run(program, arch, clone, CLONE_NEWNET) == EPERM
    clone3 = seccomp.SPECIAL["clone3"][column]
    assert run(program, arch, clone3) == ENOSYS  # so that libc falls back to clone
    unshare = seccomp.DENIED["unshare"][column]
    assert run(program, arch, unshare, CLONE_NEWUSER) == EPERM


@pytest.mark.parametrize("arch,column", ARCHES)
def test_personality_and_socket_follow_docker(program, arch, column):
    personality, socket = seccomp.SPECIAL["personality"][column], seccomp.SPECIAL["socket"][column]
    for value in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert run(program, arch, personality, value) == ALLOW
    assert run(program, arch, personality, 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE
    assert run(program, arch, socket, 2) == ALLOW  # AF_INET
    assert run(program, arch, socket, 40) == EPERM  # AF_VSOCK


@pytest.mark.parametrize("arch", [X86_64, AARCH64])
def test_numbers_beyond_the_table_get_enosys(program, arch):
    assert run(program, arch, seccomp.HIGHEST_KNOWN + 1) == ENOSYS
    assert run(program, arch, 1000) == ENOSYS
    assert run(program, arch, 0xFFFFFFFF) == ENOSYS  # -1: a tracer skipping a call


def test_foreign_architectures_are_killed(program):
    assert run(program, X86_64, X32_BIT | 39) == KILL_PROCESS  # x32 getpid
    assert run(program, I386, 20) == KILL_PROCESS  # i386 getpid, through int 0x80
    assert run(program, ARM, 20) == KILL_PROCESS
    assert run(program, 0xC00000F3, 172) == KILL_PROCESS  # riscv64


def _header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text)}


@pytest.mark.parametrize(
    "column,header",
    [
        (0, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        (1, "/usr/include/asm-generic/unistd.h"),
    ],
)
def test_numbers_match_the_kernel_headers(column, header):
    """Every number the headers on this machine know; newer ones (above their last) are not checked."""
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    known = _header_numbers(Path(header))
    newest = max(n for name, n in known.items() if name != "syscalls")
    table = {**seccomp.DENIED, **seccomp.SPECIAL, **ALLOWED}
    checked = 0
    for name, numbers in table.items():
        if numbers[column] is None or numbers[column] > newest:
            continue
        assert known.get(name) == numbers[column], name
        checked += 1
    assert checked > 60


def test_the_filter_reaches_bubblewrap_through_a_pipe(tmp_path):
    fd = seccomp.program_fd()
    try:
        assert os.read(fd, 1 << 16) == seccomp.program() and os.read(fd, 1) == b""
        assert not os.get_inheritable(fd)  # only a child that is given it (pass_fds) gets it
    finally:
        os.close(fd)
    with Bwrap(tmp_path, network=False) as box:
        argv = box.argv(["true"])
        assert argv[argv.index("--seccomp") + 1] == str(box.pass_fds[0])
        opened = list(box.pass_fds)
    assert box.pass_fds == []
    with pytest.raises(OSError):
        os.fstat(opened[0])


def test_build_steps_get_the_containers_sandbox(tmp_path):
    with Bwrap(tmp_path) as box:  # what the image builder runs: with the host network
        argv = box.argv(["sh"])
    assert "--unshare-net" not in argv and "--seccomp" in argv
    caps = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert argv.count("--cap-drop") == 1 and caps == list(CONTAINER_CAPS)
    assert argv[argv.index("/proc/sys") - 1] == "--ro-bind"
