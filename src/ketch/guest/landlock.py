"""Landlock for a sandbox container: its files, its sockets and its signals, nothing else.

The container's first process (``ketch.guest``) restricts itself, before any
user code runs, and so everything it starts, with one Landlock ruleset
(Linux 6.12+, ABI 6):

* **files**: every file access right, allowed only beneath the container's
  own ``/`` (its image, its writable layer, what is bound into it). A file or
  directory reached some other way (a descriptor from outside the container's
  mount tree, a way out of its mount namespace) is refused, whoever owns it:
  this matters most where container root is an ordinary account on the host
  (docs/rootless.md);
* **abstract unix sockets**: only those made inside the container. A
  container that keeps the host's network shares the host's abstract socket
  names, which have no file permissions: an X server, a session bus or an
  agent listening on one would take a connection, and may trust the peer's uid;
* **signals**: only to processes inside the container.

On an older kernel nothing is applied and the reason is returned
(``ketch server status`` shows it).

Example::

    why_not = confine_container()   # "" when applied
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

# Linux's generic system call numbers for Landlock (x86-64 and aarch64 alike).
SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
# Every filesystem access right of ABI 5 (execute ... ioctl_dev): all handled, all
# granted beneath the container's root, none elsewhere.
ACCESS_FS_ALL = (1 << 16) - 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
SCOPES_ABI = 6
PR_SET_NO_NEW_PRIVS = 38
O_PATH = 0o10000000


def confine_container(root: str = "/") -> str:
    """Restrict this process (and its future children) to the container; "" or why not."""
    if platform.machine() not in ("x86_64", "aarch64"):
        return f"Landlock system call numbers are not known here ({platform.machine()})"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    if abi < SCOPES_ABI:
        return "this kernel has no Landlock scopes (Linux 6.12+ with Landlock enabled)"
    # struct landlock_ruleset_attr: handled_access_fs, handled_access_net, scoped (u64 each)
    attr = ctypes.create_string_buffer(
        struct.pack("=QQQ", ACCESS_FS_ALL, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    )
    fd = libc.syscall(SYS_CREATE_RULESET, attr, ctypes.c_size_t(len(attr.raw)), 0)
    if fd < 0:
        return f"landlock_create_ruleset failed: errno {ctypes.get_errno()}"
    try:
        beneath = os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # struct landlock_path_beneath_attr: allowed_access (u64), parent_fd (s32), packed
            rule = ctypes.create_string_buffer(struct.pack("=Qi", ACCESS_FS_ALL, beneath))
            if libc.syscall(SYS_ADD_RULE, ctypes.c_int(fd), RULE_PATH_BENEATH, rule, 0) != 0:
                return f"landlock_add_rule failed: errno {ctypes.get_errno()}"
        finally:
            os.close(beneath)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"no_new_privs failed: errno {ctypes.get_errno()}"
        if libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(fd), 0) != 0:
            return f"landlock_restrict_self failed: errno {ctypes.get_errno()}"
    finally:
        libc.close(ctypes.c_int(fd))
    return ""
