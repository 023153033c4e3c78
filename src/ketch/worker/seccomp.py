"""The seccomp filter every container and image build step runs under, as classic BPF.

Its effect is Docker's default profile for a container with Docker's default
capabilities (no ``CAP_SYS_ADMIN``): the system calls that profile leaves out
fail with ``EPERM``, everything else is allowed. It is written as a deny list
(Docker's is an allow list) so that a new harmless system call keeps working;
system calls numbered above everything this table knows get ``ENOSYS``, as runc
does, so a new kernel's additions are refused until reviewed and libc falls back.

* mounts, namespaces and kernel state: ``mount``, ``umount2``, ``pivot_root``,
  the new mount API (``fsopen``, ``open_tree``, ``move_mount``, …), ``setns``,
  ``unshare`` and ``clone`` with any ``CLONE_NEW*`` flag (no user namespaces
  inside a container), ``clone3`` (``ENOSYS``: its flags sit in memory that
  seccomp cannot read, so libc falls back to ``clone``), ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, ``syslog``, ``acct``,
  ``quotactl``, ``swapon``, ``reboot``, ``sethostname``;
* kernel code: ``init_module``, ``finit_module``, ``delete_module``, ``kexec_*``;
* the keyring (not namespaced): ``add_key``, ``request_key``, ``keyctl``;
* the clock, raw I/O and other processes' memory policy: ``settimeofday``,
  ``clock_settime``, ``iopl``, ``ioperm``, ``mbind``, ``set_mempolicy``, …;
* ``open_by_handle_at`` (the "shocker" escape), ``kcmp``, ``pidfd_getfd``,
  ``process_madvise``; ``personality`` except Docker's five values;
  ``socket(AF_VSOCK)``.

Only x86-64 and aarch64 system calls pass; any other architecture, including
x86-64's x32 and i386 entry points, kills the process.

The program is compiled once per process (:func:`program`) and handed to
bubblewrap through a pipe per sandbox (:func:`program_fd`, ``bwrap --seccomp FD``).
"""

from __future__ import annotations

import errno
import functools
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
# Both architectures are little-endian: the low 32 bits of args[i] are at 16 + 8 * i.
NR_OFFSET = 0
ARCH_OFFSET = 4
ARG0_OFFSET = 16

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# Classic BPF opcodes (linux/bpf_common.h): BPF_LD|BPF_W|BPF_ABS, BPF_JMP|<op>|BPF_K, BPF_RET|BPF_K.
LD_ABS = 0x20
JA = 0x05
JEQ = 0x15
JGT = 0x25
JGE = 0x35
JSET = 0x45
RET = 0x06

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACES = 0x7E020000
# personality() values Docker allows: Linux, LINUX32, UNAME26, both, and the query
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_VSOCK = 40
HIGHEST_KNOWN = 470  # listns, the newest call this table knows; above it: ENOSYS

# name: (x86-64 number, aarch64 number); None where the architecture has no such call.
# Numbers from asm/unistd_64.h and asm-generic/unistd.h; from 424 on both share one table.
DENIED: dict[str, tuple[int | None, int | None]] = {
    # mounts, namespaces and kernel-wide state (CAP_SYS_ADMIN in Docker's profile)
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "setns": (308, 268),
    "unshare": (272, 97),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "open_tree_attr": (467, 467),
    "listns": (470, 470),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18),
    "fanotify_init": (300, 262),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "syslog": (103, 116),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "acct": (163, 89),
    "vhangup": (153, 58),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # kernel code
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    # the kernel keyring, which no namespace separates
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    # the clock, raw I/O ports, NUMA policy (CAP_SYS_TIME, CAP_SYS_RAWIO, CAP_SYS_NICE)
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "iopl": (172, None),
    "ioperm": (173, None),
    "mbind": (237, 235),
    "set_mempolicy": (238, 237),
    "get_mempolicy": (239, 236),
    "migrate_pages": (256, 238),
    "move_pages": (279, 239),
    "set_mempolicy_home_node": (450, 450),
    # other processes and files by handle (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH)
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440),
    "open_by_handle_at": (304, 265),
    # obsolete calls Docker's profile leaves out
    "uselib": (134, None),
    "ustat": (136, None),
    "sysfs": (139, None),
    "_sysctl": (156, None),
    "nfsservctl": (180, 42),
    "getpmsg": (181, None),
    "putpmsg": (182, None),
    "afs_syscall": (183, None),
    "tuxcall": (184, None),
    "security": (185, None),
    "vserver": (236, None),
}

# Calls decided on an argument, and clone3.
SPECIAL: dict[str, tuple[int, int]] = {
    "clone": (56, 220),
    "clone3": (435, 435),
    "personality": (135, 92),
    "socket": (41, 198),
}


@dataclass(frozen=True)
class Arch:
    """One architecture's section of the filter."""

    name: str
    audit: int
    column: int  # index into the number tuples above
    has_x32: bool = False


ARCHES = (
    Arch("x86_64", AUDIT_ARCH_X86_64, 0, has_x32=True),
    Arch("aarch64", AUDIT_ARCH_AARCH64, 1),
)


@dataclass
class _Assembler:
    """Instructions with symbolic jump targets, resolved to offsets by :meth:`assemble`."""

    code: list[tuple[int, str | None, str | None, int]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    _count: int = 0

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}.{self._count}"

    def load(self, offset: int) -> None:
        self.code.append((LD_ABS, None, None, offset))

    def jump(self, op: int, k: int, true: str | None, false: str | None = None) -> None:
        self.code.append((op, true, false, k))

    def goto(self, target: str) -> None:
        self.code.append((JA, target, None, 0))

    def ret(self, value: int) -> None:
        self.code.append((RET, None, None, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (op, true, false, k) in enumerate(self.code):
            if op == JA:
                k, jt, jf = self._offset(index, true), 0, 0
            else:
                jt, jf = self._offset(index, true), self._offset(index, false)
                if max(jt, jf) > 255:
                    raise ValueError("a seccomp jump is longer than 255 instructions")
            out += struct.pack("=HBBI", op, jt, jf, k)
        return bytes(out)

    def _offset(self, index: int, target: str | None) -> int:
        offset = 0 if target is None else self.labels[target] - index - 1
        if offset < 0:
            raise ValueError(f"a seccomp jump to {target} goes backwards")
        return offset


def _dispatch(asm: _Assembler, rules: Sequence[tuple[int, str]], default: str) -> None:
    """Jump to the target of the system call number in A: a binary search, then short scans."""
    if len(rules) <= 4:
        for number, target in rules:
            asm.jump(JEQ, number, target)
        asm.goto(default)
        return
    middle = len(rules) // 2
    upper = asm.fresh("upper")
    asm.jump(JGE, rules[middle][0], upper)
    _dispatch(asm, rules[:middle], default)
    asm.label(upper)
    _dispatch(asm, rules[middle:], default)


# What a fork template (ketch.guest.zygote) needs beyond that, for its forks to make their
# own user, mount, pid, ipc and uts namespaces: inside a user namespace of their own these
# calls reach only what they made. Each fork loads the full filter before user code runs.
FORK_ALLOWED = ("mount", "umount2", "pivot_root", "unshare", "sethostname")


def _section(asm: _Assembler, arch: Arch, forking: bool = False) -> None:
    p = arch.name
    rules: dict[int, str] = {}
    for name, numbers in DENIED.items():
        if forking and name in FORK_ALLOWED:
            continue
        if (number := numbers[arch.column]) is not None:
            rules[number] = f"{p}.eperm"
    special = {name: numbers[arch.column] for name, numbers in SPECIAL.items()}
    rules[special["clone"]] = f"{p}.clone"
    rules[special["clone3"]] = f"{p}.enosys"
    rules[special["personality"]] = f"{p}.personality"
    rules[special["socket"]] = f"{p}.socket"
    asm.label(p)
    asm.load(NR_OFFSET)
    asm.jump(JGT, HIGHEST_KNOWN, f"{p}.high")
    _dispatch(asm, sorted(rules.items()), f"{p}.allow")
    asm.label(f"{p}.clone")
    asm.load(ARG0_OFFSET)
    asm.jump(JSET, CLONE_NAMESPACES, f"{p}.eperm", f"{p}.allow")
    asm.label(f"{p}.personality")
    asm.load(ARG0_OFFSET)
    for value in PERSONALITIES:
        asm.jump(JEQ, value, f"{p}.allow")
    asm.goto(f"{p}.eperm")
    asm.label(f"{p}.socket")
    asm.load(ARG0_OFFSET)
    asm.jump(JEQ, AF_VSOCK, f"{p}.eperm", f"{p}.allow")
    asm.label(f"{p}.high")  # A is still the number: -1 (a tracer's skip) and unknown calls
    if arch.has_x32:
        asm.jump(JEQ, 0xFFFFFFFF, f"{p}.enosys")
        asm.jump(JSET, X32_SYSCALL_BIT, f"{p}.kill")
    asm.goto(f"{p}.enosys")
    asm.label(f"{p}.allow")
    asm.ret(RET_ALLOW)
    asm.label(f"{p}.eperm")
    asm.ret(RET_ERRNO | errno.EPERM)
    asm.label(f"{p}.enosys")
    asm.ret(RET_ERRNO | errno.ENOSYS)
    asm.label(f"{p}.kill")
    asm.ret(RET_KILL_PROCESS)


@functools.cache
def program(forking: bool = False) -> bytes:
    """The filter as an array of ``struct sock_filter``, compiled once per process;
    ``forking``: the fork template's, which lets its forks make their namespaces
    (:data:`FORK_ALLOWED`)."""
    asm = _Assembler()
    asm.load(ARCH_OFFSET)
    for arch in ARCHES:
        asm.jump(JEQ, arch.audit, arch.name)
    asm.label("kill")
    asm.ret(RET_KILL_PROCESS)
    for arch in ARCHES:
        _section(asm, arch, forking)
    return asm.assemble()


def program_fd(forking: bool = False) -> int:
    """A pipe's read end holding :func:`program`, for ``bwrap --seccomp FD``; the caller closes it.

    Example::

        fd = program_fd()
        subprocess.run(["bwrap", "--seccomp", str(fd), ...], pass_fds=(fd,))
        os.close(fd)
    """
    data = program(forking)
    read_fd, write_fd = os.pipe()  # the program (~1.5 KiB) fits a pipe's buffer: no blocking
    try:
        if os.write(write_fd, data) != len(data):
            raise OSError("the seccomp program did not fit the pipe")
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd
