"""A sandbox's way out, by destination: ``Sandbox.create(outbound_cidr_allowlist=[...])``.

Such a sandbox gets a network namespace of its own (as ``block_network=True``
does). Before anything in it can reach out, the control plane

1. writes its firewall, in its namespace (``nsenter --net`` then ``iptables``):
   loopback, the allowed networks and the DNS resolver are accepted, everything
   else is rejected (IPv6 entirely, but loopback); code in the sandbox cannot
   change it (it has no ``CAP_NET_ADMIN``);
2. starts ``slirp4netns`` on it: a user-space network stack that gives the
   namespace a ``tap0`` interface (10.0.2.100, gateway 10.0.2.2, DNS 10.0.2.3)
   and makes its connections from the host's network, with nothing changed on
   the host (no bridge, no NAT rules, no forwarding), for root and an ordinary
   account alike.

The rules come first, so there is no moment with a route out and no filter.
10.0.2.2 is the host itself (its loopback): it is reachable only when an
allowed network contains it (``--disable-host-loopback`` otherwise).

Example::

    process = await allow(container_pid, ["10.0.0.0/8", "192.0.2.7/32"])
    ...
    process.kill()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Sequence

from ..exception import InvalidError

GATEWAY = ipaddress.ip_address("10.0.2.2")  # slirp4netns's: the host
DNS = "10.0.2.3"  # slirp4netns's resolver, which asks the host's
MAX_NETWORKS = 64
FIND_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 10.0


def check_networks(values: Sequence[str]) -> list[str]:
    """The allowlist as IPv4 networks (``10.0.0.0/8``, ``192.0.2.7``); a clear error for
    anything else."""
    if len(values) > MAX_NETWORKS:
        raise InvalidError(f"an allowlist has at most {MAX_NETWORKS} networks")
    out = []
    for value in values:
        try:
            network = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise InvalidError(
                f"outbound_cidr_allowlist: {value!r} is not a network like 10.0.0.0/8"
            ) from None
        if network.version != 4:
            raise InvalidError(
                f"outbound_cidr_allowlist: {value!r} is IPv6; a sandbox's way out is IPv4 only"
            )
        out.append(str(network))
    return out


def _netns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
                if parent == pid:
                    found.append(int(entry))
    return found


async def _inside(root_pid: int) -> int:
    """A process of the container's tree that is in its network namespace."""
    ours = _netns("self")
    deadline = asyncio.get_running_loop().time() + FIND_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        queue = [root_pid]
        while queue:
            pid = queue.pop()
            with contextlib.suppress(OSError):
                if _netns(pid) != ours:
                    return pid
                queue += _children(pid)
        await asyncio.sleep(0.01)
    raise RuntimeError("the sandbox's network namespace did not appear")


async def _restore(enter: list[str], tool: str, rules: list[str]) -> None:
    """Load a filter table of ``rules`` (``-A OUTPUT ...`` lines) in one go, in the namespace."""
    table = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    table += "".join(f"-A OUTPUT {rule}\n" for rule in rules) + "COMMIT\n"
    proc = await asyncio.create_subprocess_exec(
        *enter,
        tool,
        "-w",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(table.encode())
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(tool)}: {err.decode(errors='replace').strip()}")


def _tool(name: str) -> str:
    from . import rootless

    path = shutil.which(name) or next(
        (
            p
            for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}")
            if os.path.exists(p)
        ),
        None,
    )
    if path is None:
        package = "iptables" if "tables" in name else "util-linux" if name == "nsenter" else name
        raise InvalidError(
            f"outbound_cidr_allowlist needs {name}: {rootless.install_hint(package)}"
        )
    return path


async def allow(root_pid: int, networks: Sequence[str]) -> asyncio.subprocess.Process:
    """Give the container whose first process is ``root_pid`` a way out to ``networks``
    only; returns the ``slirp4netns`` process (kill it when the container goes)."""
    slirp, nsenter = _tool("slirp4netns"), _tool("nsenter")
    restore, restore6 = _tool("iptables-restore"), _tool("ip6tables-restore")
    pid = await _inside(root_pid)
    enter = [nsenter, f"--net=/proc/{pid}/ns/net"]
    rules = ["-o lo -j ACCEPT", *(f"-d {network} -j ACCEPT" for network in networks)]
    rules += [f"-d {DNS} -p {proto} --dport 53 -j ACCEPT" for proto in ("udp", "tcp")]
    await _restore(enter, restore, [*rules, "-j REJECT"])
    await _restore(enter, restore6, ["-o lo -j ACCEPT", "-j REJECT"])
    host = any(GATEWAY in ipaddress.ip_network(n) for n in networks)
    read_fd, write_fd = os.pipe()
    argv = [slirp, "--configure", "--mtu=65520", f"--ready-fd={write_fd}"]
    if not host:
        argv.append("--disable-host-loopback")
    said = tempfile.TemporaryFile()  # what it says, for the error should it fail
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            str(pid),
            "tap0",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=said,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    finally:
        os.close(write_fd)
    try:
        ready = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, os.read, read_fd, 1),
            READY_TIMEOUT_S,
        )
    except TimeoutError:
        ready = b""
    if ready != b"1":
        with contextlib.suppress(ProcessLookupError):  # it may have exited (and been reaped)
            process.kill()  # (its end of the pipe closes, so the read above returns)
    os.close(read_fd)
    with said:
        if ready != b"1":
            await process.wait()
            said.seek(0)
            why = said.read().decode(errors="replace").strip()[-300:]
            hint = (
                ""
                if os.access("/dev/net/tun", os.R_OK | os.W_OK)
                else (
                    " (/dev/net/tun is not open to this account: an administrator can run "
                    "`chmod 0666 /dev/net/tun`, as most distributions have it)"
                )
            )
            raise RuntimeError(f"slirp4netns did not bring the sandbox's network up: {why}{hint}")
    return process
