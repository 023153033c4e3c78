"""Landlock scoping for a sandbox container: no abstract unix sockets or signals outside it.

A container that keeps the host's network shares its abstract unix socket
namespace with every process on the host, and such sockets have no file
permissions: an X server, a session bus or an agent listening on one would take
a connection from the container, and may trust it by its uid (which, in an
ordinary account's control plane, is the account). Landlock's scopes (Linux 6.12,
ABI 6) close that: once the container's first process restricts itself, it and
everything it starts may connect only to abstract sockets made inside the
container, and signal only processes inside it.

Applied by ``ketch.guest`` before any user code runs; on an older kernel it is
skipped and the reason is returned (the container's log says so).

Example::

    why_not = scope_container()   # "" when applied
"""

from __future__ import annotations

import ctypes
import platform
import struct

# Linux's generic system call numbers for Landlock (x86-64 and aarch64 alike).
SYS_CREATE_RULESET = 444
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
SCOPES_ABI = 6
PR_SET_NO_NEW_PRIVS = 38


def scope_container() -> str:
    """Restrict this process (and its future children) to the container's scope; "" or why not."""
    if platform.machine() not in ("x86_64", "aarch64"):
        return f"Landlock system call numbers are not known here ({platform.machine()})"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    if abi < SCOPES_ABI:
        return "this kernel has no Landlock scopes (Linux 6.12+ with Landlock enabled)"
    # struct landlock_ruleset_attr: handled_access_fs, handled_access_net, scoped (u64 each)
    attr = ctypes.create_string_buffer(
        struct.pack("=QQQ", 0, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    )
    fd = libc.syscall(SYS_CREATE_RULESET, attr, ctypes.c_size_t(len(attr.raw)), 0)
    if fd < 0:
        return f"landlock_create_ruleset failed: errno {ctypes.get_errno()}"
    try:
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"no_new_privs failed: errno {ctypes.get_errno()}"
        if libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(fd), 0) != 0:
            return f"landlock_restrict_self failed: errno {ctypes.get_errno()}"
    finally:
        libc.close(ctypes.c_int(fd))
    return ""
