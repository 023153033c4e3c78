"""Sandboxes (``ketch.Sandbox``): a container of an image that runs commands on request.

A sandbox is a container like a function's (the same worker, image, Secrets,
Volumes, limits, ``block_network`` and isolation), with no function in it:
its first process is the exec agent (``ketch.guest.sandbox``), which runs the
commands the control plane sends over the container channel and streams their
output back. The control plane keeps each command's output, so clients read it
from any offset (a long poll) and write its stdin, in pieces.

Decisions (docs/architecture.md, "Sandboxes"):

* A sandbox's container has no API token: code in it cannot call the control
  plane (Modal gives a sandbox none by default). Its channel token is good for
  the channel only.
* ``Sandbox.create(*cmd)`` runs ``cmd`` as the main command; the sandbox ends
  when it exits, with its exit code. Without ``cmd`` it runs until terminated
  or until ``timeout`` (default 300 s, at most 24 h).
* Sandboxes live in the control plane's memory: a control plane that stops
  (or is killed) takes its sandboxes with it (bubblewrap's ``--die-with-parent``):
  they are terminated, never orphaned.
* A command's output is a pipe's: what was read is gone, and a stream with
  ``HIGH_WATER`` bytes unread pauses the command (its writes block) until
  readers bring it under ``LOW_WATER``, so a slow reader loses nothing.

Example (the RPCs; the SDK wraps them)::

    SandboxCreate {app_id, spec, cmd, timeout}        -> {sandbox_id}
    SandboxExec {sandbox_id, argv}                    -> {exec_id}
    SandboxExecRead {sandbox_id, exec_id, fd, offset} -> {data, offset, eof}
    SandboxExecWait {sandbox_id, exec_id, timeout}    -> {returncode}
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._ids import new_id
from .._spec import FunctionSpec
from .._tasks import spawn
from ..exception import (
    Error,
    InvalidError,
    NotFoundError,
    PermissionDeniedError,
    ResourceUnavailableError,
    SandboxFilesystemDirectoryNotEmptyError,
    SandboxFilesystemError,
    SandboxFilesystemFileExistsError,
    SandboxFilesystemIsADirectoryError,
    SandboxFilesystemNotADirectoryError,
    SandboxFilesystemNotFoundError,
    SandboxFilesystemPermissionError,
)
from ..images.layers import remove_tree
from ..worker import egress, gpus
from . import auth, secret_store
from .rpc import rpc
from .tunnels import MAX_PORTS

if TYPE_CHECKING:
    from .api import Api
    from .auth import Caller
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
MAX_TIMEOUT_S = 24 * 3600.0
# A stream's unread output, as a pipe's: past HIGH_WATER its command is paused (its
# writes block) until readers bring it under LOW_WATER; MAX_OUTPUT_BYTES is the hard
# bound should an agent not pause (the oldest unread bytes then go, and readers are told).
HIGH_WATER = 16 << 20
LOW_WATER = 4 << 20
MAX_OUTPUT_BYTES = 64 << 20
MAX_READ_BYTES = 4 << 20  # per reply
MAX_WAIT_S = 50.0  # one long poll
MAX_EXECS = 1024  # commands kept per sandbox (finished ones are dropped first)
MAIN = "main"  # the exec id of the main command
FILE_OP_TIMEOUT_S = 60.0
_FILE_ERRORS: dict[str, type[SandboxFilesystemError]] = {
    "FileNotFoundError": SandboxFilesystemNotFoundError,
    "IsADirectoryError": SandboxFilesystemIsADirectoryError,
    "NotADirectoryError": SandboxFilesystemNotADirectoryError,
    "PermissionError": SandboxFilesystemPermissionError,
    "FileExistsError": SandboxFilesystemFileExistsError,
    "DirectoryNotEmpty": SandboxFilesystemDirectoryNotEmptyError,
}


@dataclass
class _Exec:
    id: str
    out: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    dropped: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})  # bytes gone before buf
    paused: dict[int, bool] = field(default_factory=lambda: {1: False, 2: False})
    returncode: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class _Sandbox:
    id: str
    app_id: str
    token: str
    spec: FunctionSpec
    name: str | None
    tags: dict[str, str]
    created_at: float = field(default_factory=time.time)
    writer: asyncio.StreamWriter | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # until the agent says hello
    execs: dict[str, _Exec] = field(default_factory=dict)
    returncode: int | None = None
    reason: str = ""  # why it ended
    done: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    files: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)  # by request
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its agent said hello
    idle_timeout: float | None = None
    active_at: float = field(default_factory=time.monotonic)  # the last exec, stdin or file op
    probe: dict[str, Any] | None = None  # readiness_probe, run by its agent
    probed: asyncio.Event = field(default_factory=asyncio.Event)  # the probe passed
    ports: list[int] = field(default_factory=list)  # tunnelled (encrypted_ports, ...)
    function: bool = False  # a function's container, taking commands (`ketch container exec`)
    tunnels_open: asyncio.Event = field(default_factory=asyncio.Event)

    def describe(self) -> dict[str, Any]:
        return {
            "sandbox_id": self.id,
            "app_id": self.app_id,
            "name": self.name,
            "tags": self.tags,
            "created_at": self.created_at,
            "returncode": self.returncode,
            "done": self.done.is_set(),
            "reason": self.reason,
        }


class SandboxService:
    """The control plane's sandboxes, by id."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.sandboxes: dict[str, _Sandbox] = {}
        # Interactive sessions (`ketch run -i`) waiting for their app's client, by app.
        self.sessions: dict[str, collections.deque[tuple[str, str]]] = {}
        self.session_opened: dict[str, asyncio.Event] = {}

    # -- lifetime ------------------------------------------------------------
    async def create(self, body: dict[str, Any], caller: Caller) -> _Sandbox:
        app = self.d.store.get_app(str(body["app_id"]))
        if app is None or app["state"] != "running":
            raise NotFoundError(f"app {body['app_id']!r} is not running")
        spec = self._spec(body, app, caller)
        self.check_secrets(caller, spec.secrets)
        networks = None
        if body.get("allowlist") is not None:  # its own network namespace, a way out to these
            if spec.block_network:
                raise InvalidError("outbound_cidr_allowlist cannot be used with block_network=True")
            networks = egress.check_networks(list(body["allowlist"]))
            spec = dataclasses.replace(spec, block_network=True)
        if spec.gpu and (problem := self.d.gpus.check(spec.gpu)):
            raise ResourceUnavailableError(f"sandbox: {problem}")
        timeout = float(body.get("timeout") or DEFAULT_TIMEOUT_S)
        self._check(body, app, timeout)
        sb = _Sandbox(
            new_id("sb"),
            app["id"],
            secrets.token_urlsafe(24),
            spec,
            body.get("name"),
            dict(body.get("tags") or {}),
        )
        sb.probe = body.get("probe")
        sb.ports = sorted({int(p) for p in body.get("ports") or []})
        self.sandboxes[sb.id] = sb
        cmd = [str(a) for a in body.get("cmd") or []]
        if cmd:
            sb.execs[MAIN] = _Exec(MAIN)
        try:
            await self._start(sb)
            if networks is not None:  # before its main command: its way out is ready
                await self._allow_egress(sb, networks)
            if cmd:
                main: dict[str, Any] = {"argv": cmd, "workdir": body.get("workdir"), "env": {}}
                self._send(sb, {"t": "exec", "id": MAIN, **main, "pty": body.get("pty") or None})
            for port in sb.ports:
                await self.d.tunnels.open(sb.id, port, functools.partial(self._send, sb))
        except BaseException:
            self.terminate(sb.id, "failed to start")
            self.sandboxes.pop(sb.id, None)
            self.d.gpus.release(sb.id)
            if self.d.volumes is not None:
                self.d.volumes.release(sb.id)
            await self.d.tunnels.close(sb.id)
            raise
        sb.tunnels_open.set()
        sb.timer = asyncio.get_running_loop().call_later(
            timeout, self.terminate, sb.id, f"timed out after {timeout:g} s"
        )
        if body.get("idle_timeout"):
            sb.idle_timeout = float(body["idle_timeout"])
            self._check_idle(sb.id)
        return sb

    def check_secrets(self, caller: Caller, entries: list[dict[str, Any]]) -> None:
        """A container gives its sandboxes only Secrets its own function has: it could read
        any other's values from the sandbox (named Secrets are found by name)."""
        if caller.role != "container" or not entries:
            return
        handle = self.d.containers.get(caller.container_id or "")
        info = self.d.pool_info.get(handle.pool_key) if handle is not None else None
        own = info.spec.secrets if info is not None else []
        for entry in entries:
            if entry not in own:
                name = entry.get("name") or "an inline Secret"
                raise PermissionDeniedError(
                    f"a container may give a sandbox only its own function's Secrets, not {name!r}"
                )

    async def _allow_egress(self, sb: _Sandbox, networks: list[str]) -> None:
        """A way out to ``networks`` only (:mod:`ketch.worker.egress`), and a resolver."""
        allow = getattr(self.d.worker, "allow_egress", None)
        if allow is None:
            raise InvalidError(
                "outbound_cidr_allowlist needs the sandbox runtime (this control plane runs "
                f"{self.d.worker.name!r}, whose containers share the host's network)"
            )
        try:
            await allow(sb.id, networks)
        except Error:
            raise
        except Exception as exc:  # this machine lacks something: say what
            logger.warning("outbound_cidr_allowlist of %s failed", sb.id, exc_info=exc)
            raise InvalidError(f"outbound_cidr_allowlist: {type(exc).__name__}: {exc}") from None
        resolver = f"nameserver {egress.DNS}\n".encode()
        await self.file(
            {"sandbox_id": sb.id, "op": "write", "path": "/etc/resolv.conf", "data": resolver}
        )

    def _check(self, body: dict[str, Any], app: dict[str, Any], timeout: float) -> None:
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise InvalidError(f"timeout must be between 0 and {MAX_TIMEOUT_S:.0f} s")
        live = sum(1 for s in self.sandboxes.values() if not s.done.is_set())
        if live >= self.d.max_containers:
            raise ResourceUnavailableError(
                f"this node runs {live} sandboxes, its limit (max_containers_per_node); "
                "terminate some first"
            )
        if body.get("name") and any(
            s.name == body["name"] and s.app_id == app["id"] and not s.done.is_set()
            for s in self.sandboxes.values()
        ):
            raise InvalidError(
                f"app {app['name']!r} already has a running sandbox {body['name']!r}"
            )
        probe = body.get("probe")
        if probe and bool(probe.get("tcp_port")) == bool(probe.get("exec_argv")):
            raise InvalidError("a readiness probe has either a tcp_port or an exec_argv")
        if len(set(body.get("ports") or [])) > MAX_PORTS:
            raise InvalidError(f"a sandbox may tunnel at most {MAX_PORTS} ports")

    def _spec(self, body: dict[str, Any], app: dict[str, Any], caller: Caller) -> FunctionSpec:
        if body.get("function_id"):  # `ketch shell FILE::function`: that function's container
            spec, fn_app = self.d.function_spec(str(body["function_id"]))
            if fn_app != app["id"]:
                raise InvalidError(f"function {body['function_id']} is not of app {app['name']!r}")
            return dataclasses.replace(spec, web=None, schedule=None)
        # The image's copy=False files are host paths; a sandbox runs no app source.
        auth.check_host_paths(caller, auth.host_paths({"image": body["spec"].get("image")}))
        return dataclasses.replace(
            FunctionSpec.from_wire(body["spec"]),
            module_file=None,
            root_dir=None,
            serialized_fn=None,
            source=None,
            web=None,
            schedule=None,
        )

    def _busy(self, sb: _Sandbox) -> bool:
        """A command runs (the main one included) or output waits to be read."""
        return self.d.tunnels.active(sb.id) or any(
            ex.returncode is None or ex.out[1] or ex.out[2] for ex in sb.execs.values()
        )

    def _check_idle(self, sandbox_id: str) -> None:
        """Terminate a sandbox idle for ``idle_timeout`` s: no command running, no unread
        output, nothing sent to it (exec, stdin, files) in that time."""
        sb = self.sandboxes.get(sandbox_id)
        if sb is None or sb.done.is_set() or sb.idle_timeout is None:
            return
        now = time.monotonic()
        if self._busy(sb):
            sb.active_at = now
        idle_for = now - sb.active_at
        if idle_for >= sb.idle_timeout:
            self.terminate(sb.id, f"was idle for {sb.idle_timeout:g} s (idle_timeout)")
            return
        wait = min(sb.idle_timeout - idle_for, 1.0)
        asyncio.get_running_loop().call_later(wait, self._check_idle, sandbox_id)

    async def _start(self, sb: _Sandbox) -> None:
        env = secret_store.container_env(self.d.store, sb.spec.secrets)
        env.update(sb.spec.env)
        env.update(
            {
                "KETCH_CONTAINER_ID": sb.id,
                "KETCH_SANDBOX_TOKEN": sb.token,
                "KETCH_CHANNEL": self.d.channel_addr,
                "KETCH_SANDBOX": "1",
            }
        )
        if sb.spec.gpu:  # its own GPUs, as a function's container gets them
            got = self.d.gpus.allocate(sb.id, sb.spec.gpu)
            if got is None:
                wanted = ", ".join(f"{o['type']}:{o['count']}" for o in sb.spec.gpu)
                raise ResourceUnavailableError(
                    f"every GPU of this node is in use (wanted {wanted})"
                )
            env.update(gpus.visible_devices_env(got[1]))
        mounts: list[tuple[str, str, bool]] = []
        if sb.spec.volumes:
            if self.d.volumes is None:
                raise InvalidError("this control plane keeps no Volumes")
            mounts = await self.d.volumes.prepare(
                sb.id, sb.spec.volumes, self.d.worker.enforces_read_only
            )
        run_spec = sb.spec
        if sb.spec.source and sb.spec.root_dir and sb.spec.module_file:  # a deployed function's
            run_spec = self.d.source_spec(sb.spec)
        logger.info("starting sandbox %s of app %s", sb.id, sb.app_id)
        await self.d.worker.start(sb.id, env, run_spec, mounts)

    def terminate(self, sandbox_id: str, reason: str = "was terminated") -> None:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None or sb.done.is_set():
            return
        sb.reason = sb.reason or reason
        self._send(sb, {"t": "stop"})
        self.d.worker.terminate(sb.id, 2.0)

    # -- the container's side (routed here by the dispatcher) ----------------
    def running(self, app_id: str) -> list[dict[str, Any]]:
        """The app's running sandboxes (``ketch app info``), oldest first."""
        rows = [
            sb.describe()
            for sb in self.sandboxes.values()
            if sb.app_id == app_id and not sb.function
        ]
        return sorted((r for r in rows if not r["done"]), key=lambda r: r["created_at"])

    def running_count(self) -> int:
        """Sandboxes running now (not function containers taking commands)."""
        return sum(1 for sb in self.sandboxes.values() if not sb.function and not sb.done.is_set())

    def owns(self, container_id: str) -> bool:
        """A sandbox's container (not a function's that took commands)."""
        sb = self.sandboxes.get(container_id)
        return sb is not None and not sb.function

    def _function_container(self, container_id: str) -> _Sandbox | None:
        """A running function container as a sandbox that runs commands only: its guest
        loop runs the same agent (``ketch container exec ct-...``, ``ketch shell ct-...``)."""
        handle = self.d.containers.get(container_id)
        info = self.d.pool_info.get(handle.pool_key) if handle is not None else None
        if handle is None or info is None or handle.writer is None or handle.exited.is_set():
            return None
        sb = _Sandbox(container_id, info.app_id, "", info.spec, None, {}, function=True)
        sb.writer = handle.writer
        sb.ready.set()
        sb.tunnels_open.set()
        self.sandboxes[container_id] = sb
        return sb

    def hello(self, sandbox_id: str, token: str, writer: asyncio.StreamWriter) -> dict[str, Any]:
        sb = self.sandboxes[sandbox_id]
        # Once: code in the sandbox can read its agent's environment (the same uid in the
        # same pid namespace), and must not take over the agent's channel with it.
        if not secrets.compare_digest(sb.token, token) or sb.done.is_set() or sb.ready.is_set():
            raise InvalidError("unknown sandbox or bad token")
        sb.writer = writer
        sb.ready.set()
        pending, sb.pending = sb.pending, []
        return {"t": "init", "sandbox": True, "execs": pending, "probe": sb.probe}

    def message(self, sandbox_id: str, msg: dict[str, Any]) -> None:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None and msg.get("t") == "attach":
            sb = self._function_container(sandbox_id)
        if sb is None:
            return
        if msg.get("t") == "attach":  # an interactive session (ketch.guest.interact)
            self._session_opened(sb, str(msg.get("id")))
            return
        if msg.get("t") == "fs":
            waiting = sb.files.pop(str(msg.get("id")), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(msg)
            return
        if msg.get("t") == "probe":
            sb.probed.set()
            return
        ex = sb.execs.get(str(msg.get("id")))
        if ex is None:
            return
        if msg.get("t") == "out" and msg.get("fd") in (1, 2) and isinstance(msg.get("data"), bytes):
            self._output(sb, ex, msg["fd"], msg["data"])
        elif msg.get("t") == "exit":
            ex.returncode = int(msg.get("code", -1))
            ex.wake()
            if ex.id == MAIN:
                sb.returncode = ex.returncode
                sb.reason = sb.reason or f"its command exited with code {ex.returncode}"

    def _output(self, sb: _Sandbox, ex: _Exec, fd: int, data: bytes) -> None:
        buf = ex.out[fd]
        buf += data
        if len(buf) > HIGH_WATER and not ex.paused[fd]:
            ex.paused[fd] = True
            self._send(sb, {"t": "pause", "id": ex.id, "fd": fd})
        if len(buf) > MAX_OUTPUT_BYTES:
            cut = len(buf) - MAX_OUTPUT_BYTES
            del buf[:cut]
            ex.dropped[fd] += cut
        ex.wake()

    def exited(self, sandbox_id: str, reason: str) -> None:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None:
            return
        if not sb.function:  # (a function's container: the dispatcher releases them)
            if self.d.volumes is not None:
                self.d.volumes.release(sandbox_id)  # commits what it wrote to its Volumes
            self.d.gpus.release(sandbox_id)
        if sb.timer is not None:
            sb.timer.cancel()
        spawn(self.d.tunnels.close(sandbox_id), name=f"close tunnels of {sandbox_id}")
        sb.writer = None
        sb.reason = sb.reason or reason
        if sb.returncode is None:
            stopped = ("timed out", "terminated", "idle")
            sb.returncode = 137 if any(word in sb.reason for word in stopped) else 1
        for ex in sb.execs.values():
            if ex.returncode is None:
                ex.returncode = 137
            ex.wake()
        for waiting in sb.files.values():
            if not waiting.done():
                waiting.set_exception(InvalidError(f"sandbox {sb.id} {sb.reason}"))
        sb.files.clear()
        sb.done.set()
        logger.info("sandbox %s %s", sandbox_id, sb.reason)
        # Kept for a while, so that waits, reads and lists still answer.
        asyncio.get_running_loop().call_later(600, self.sandboxes.pop, sandbox_id, None)

    def log(self, sandbox_id: str, stream: str, text: str) -> None:
        sb = self.sandboxes.get(sandbox_id)
        if sb is not None:  # the agent's own words (a command it could not start, say)
            self.d.logs.add(sb.app_id, "sandbox", sandbox_id, stream, text)

    def _send(self, sb: _Sandbox, msg: dict[str, Any]) -> None:
        from .._wire import encode

        if sb.writer is None or sb.writer.is_closing():
            sb.pending.append(msg)
        else:
            sb.writer.write(encode(msg))

    # -- what clients ask ----------------------------------------------------
    def get(self, body: dict[str, Any]) -> _Sandbox:
        if not body.get("sandbox_id") and body.get("name"):
            return self.by_name(str(body.get("app_name") or ""), str(body["name"]))
        sandbox_id = str(body.get("sandbox_id"))
        sb = self.sandboxes.get(sandbox_id) or self._function_container(sandbox_id)
        if sb is None:
            raise NotFoundError(f"no sandbox or running container {sandbox_id!r}")
        return sb

    def by_name(self, app_name: str, name: str) -> _Sandbox:
        """The running sandbox called ``name`` in a running app called ``app_name``."""
        for sb in self.sandboxes.values():
            if sb.name == name and not sb.done.is_set():
                app = self.d.store.get_app(sb.app_id)
                if app is not None and app["name"] == app_name:
                    return sb
        raise NotFoundError(f"no running sandbox {name!r} in app {app_name!r}")

    def exec(self, body: dict[str, Any]) -> str:
        sb = self.get(body)
        if sb.done.is_set():
            raise InvalidError(
                f"sandbox {sb.id} has finished ({sb.reason}); it cannot run commands"
            )
        argv = [str(a) for a in body.get("argv") or []]
        if not argv:
            raise InvalidError("exec needs a command")
        if len(sb.execs) >= MAX_EXECS:
            for old in [e for e in sb.execs.values() if e.returncode is not None][:64]:
                sb.execs.pop(old.id, None)
        # As Sandbox.create's: the Secrets' variables, then env= over them.
        env = secret_store.container_env(self.d.store, list(body.get("secrets") or []))
        env.update({str(k): str(v) for k, v in (body.get("env") or {}).items() if v is not None})
        ex = _Exec(new_id("ex"))
        sb.execs[ex.id] = ex
        sb.active_at = time.monotonic()
        msg = {
            "t": "exec",
            "id": ex.id,
            "argv": argv,
            "workdir": body.get("workdir"),
            "env": env,
            "pty": body.get("pty") or None,
        }
        self._send(sb, msg)
        if body.get("timeout"):
            asyncio.get_running_loop().call_later(
                float(body["timeout"]), self._send, sb, {"t": "kill", "id": ex.id}
            )
        return ex.id

    def exec_of(self, body: dict[str, Any]) -> tuple[_Sandbox, _Exec]:
        sb = self.get(body)
        ex = sb.execs.get(str(body.get("exec_id")))
        if ex is None:
            raise NotFoundError(f"sandbox {sb.id} has no command {body.get('exec_id')!r}")
        return sb, ex

    async def read(self, body: dict[str, Any]) -> dict[str, Any]:
        sb, ex = self.exec_of(body)
        fd = int(body.get("fd", 1))
        if fd not in (1, 2):
            raise InvalidError("fd must be 1 (stdout) or 2 (stderr)")
        offset = int(body.get("offset", 0))
        wait = min(float(body.get("timeout", 0)), MAX_WAIT_S)
        deadline = time.monotonic() + wait
        while True:
            start = max(offset - ex.dropped[fd], 0)
            data = bytes(ex.out[fd][start : start + MAX_READ_BYTES])
            eof = ex.returncode is not None and start + len(data) >= len(ex.out[fd])
            left = deadline - time.monotonic()
            if data or eof or left <= 0:
                missed = max(ex.dropped[fd] - offset, 0)
                self._consumed(sb, ex, fd, start + len(data))
                return {
                    "data": data,
                    "offset": offset + missed + len(data),
                    "eof": eof,
                    "missed": missed,
                }
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ex.changed.wait(), left)

    def _consumed(self, sb: _Sandbox, ex: _Exec, fd: int, upto: int) -> None:
        """Output read up to ``upto`` (in the buffer) is gone, as from a pipe; a paused
        command goes on once little is left unread."""
        if upto > 0:
            del ex.out[fd][:upto]
            ex.dropped[fd] += upto
        if ex.paused[fd] and len(ex.out[fd]) < LOW_WATER:
            ex.paused[fd] = False
            self._send(sb, {"t": "resume", "id": ex.id, "fd": fd})

    def write(self, body: dict[str, Any]) -> None:
        sb, ex = self.exec_of(body)
        if ex.returncode is not None:
            raise InvalidError(f"command {ex.id} has exited; its stdin is closed")
        data = body.get("data") or b""
        if not isinstance(data, bytes):
            raise InvalidError("stdin data must be bytes")
        sb.active_at = time.monotonic()
        self._send(sb, {"t": "stdin", "id": ex.id, "data": data, "eof": bool(body.get("eof"))})

    def resize(self, body: dict[str, Any]) -> None:
        """A pty command's window changed size."""
        sb, ex = self.exec_of(body)
        msg = {"t": "resize", "id": ex.id, "rows": int(body["rows"]), "cols": int(body["cols"])}
        self._send(sb, msg)

    async def wait_ready(self, body: dict[str, Any]) -> bool:
        """Whether the readiness probe passed (waits up to ``timeout``)."""
        sb = self.get(body)
        if not sb.probe:
            raise InvalidError(
                f"sandbox {sb.id} has no readiness probe: create it with "
                "readiness_probe=ketch.Probe.with_tcp(port) or Probe.with_exec(...)"
            )
        waiters = [asyncio.ensure_future(e.wait()) for e in (sb.probed, sb.done)]
        try:
            await asyncio.wait(
                waiters,
                timeout=min(float(body.get("timeout", 0)), MAX_WAIT_S),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not sb.probed.is_set() and sb.done.is_set():
            raise InvalidError(f"sandbox {sb.id} {sb.reason} before it was ready")
        return sb.probed.is_set()

    async def tunnels(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        sb = self.get(body)
        with contextlib.suppress(TimeoutError):
            timeout = min(float(body.get("timeout", 0)), MAX_WAIT_S)
            await asyncio.wait_for(sb.tunnels_open.wait(), timeout)
        return self.d.tunnels.of(sb.id)

    async def snapshot(self, body: dict[str, Any]) -> dict[str, Any]:
        """Its filesystem as it is now, as a new image layer over its image's."""
        from ..image import Image, default_image

        sb = self.get(body)
        if sb.done.is_set():
            raise InvalidError(f"sandbox {sb.id} has finished ({sb.reason}); nothing to snapshot")
        take = getattr(self.d.worker, "snapshot", None)
        builder = getattr(self.d.worker, "builder", None)
        if take is None or builder is None:
            raise InvalidError(
                "snapshot_filesystem needs the sandbox runtime (this control plane runs "
                f"{self.d.worker.name!r}, whose containers share the host's filesystem)"
            )
        parent = Image.from_wire(sb.spec.image) if sb.spec.image else default_image()
        built = builder.cached(parent.to_wire())
        if built is None:
            raise InvalidError(f"the image of sandbox {sb.id} is no longer in the image cache")
        image = parent._step("snapshot", {"sandbox_id": sb.id, "id": new_id("snap")}, False)
        image = image._with(parent.mounts)
        build_dir = builder.store.new_build_dir(image.hash)
        try:
            (build_dir / "fs").mkdir()
            await take(sb.id, build_dir / "fs")
            meta = {
                "parent": parent.hash,
                "kind": "snapshot",
                "summary": f"snapshot of sandbox {sb.id}",
                "config": dict(built.config),
            }
            builder.store.commit(build_dir, image.hash, meta)
        finally:
            remove_tree(build_dir)
        logger.info("sandbox %s snapshot: layer %s", sb.id, image.hash[:12])
        return image.to_wire()

    def _session_opened(self, sb: _Sandbox, exec_id: str) -> None:
        sb.execs[exec_id] = _Exec(exec_id)
        self.sessions.setdefault(sb.app_id, collections.deque()).append((sb.id, exec_id))
        self.session_opened.setdefault(sb.app_id, asyncio.Event()).set()

    async def next_session(self, app_id: str, timeout: float) -> dict[str, str] | None:
        """The app's oldest interactive session no client has taken (waits up to ``timeout``)."""
        deadline = time.monotonic() + min(timeout, MAX_WAIT_S)
        while True:
            waiting = self.sessions.get(app_id)
            while waiting:
                container_id, exec_id = waiting.popleft()
                sb = self.sandboxes.get(container_id)
                if sb is not None and not sb.done.is_set():
                    return {"container_id": container_id, "exec_id": exec_id}
            opened = self.session_opened.setdefault(app_id, asyncio.Event())
            opened.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(opened.wait(), left)

    async def wait_exec(self, body: dict[str, Any]) -> int | None:
        _, ex = self.exec_of(body)
        deadline = time.monotonic() + min(float(body.get("timeout", 0)), MAX_WAIT_S)
        while ex.returncode is None and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ex.changed.wait(), left)
        return ex.returncode

    async def wait(self, body: dict[str, Any]) -> _Sandbox:
        sb = self.get(body)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(sb.done.wait(), min(float(body.get("timeout", 0)), MAX_WAIT_S))
        return sb

    async def file(self, body: dict[str, Any]) -> Any:
        """One file operation in the sandbox (read a piece, write, ls, mkdir, rm)."""
        sb = self.get(body)
        if sb.done.is_set():
            raise InvalidError(f"sandbox {sb.id} has finished ({sb.reason})")
        if not sb.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sb.ready.wait(), FILE_OP_TIMEOUT_S)
        if sb.writer is None:
            raise InvalidError(f"sandbox {sb.id} is not running")
        sb.active_at = time.monotonic()
        request = new_id("fs")
        waiting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        sb.files[request] = waiting
        fields = ("op", "path", "offset", "length", "data", "append", "parents", "recursive")
        self._send(sb, {"t": "fs", "id": request, **{k: body.get(k) for k in fields}})
        try:
            reply = await asyncio.wait_for(waiting, FILE_OP_TIMEOUT_S)
        except TimeoutError:
            raise InvalidError(f"sandbox {sb.id} did not answer a file operation") from None
        finally:
            sb.files.pop(request, None)
        if "error" in reply:
            kind, text = reply["error"]
            raise _FILE_ERRORS.get(str(kind), SandboxFilesystemError)(str(text))
        return reply.get("ok")

    async def close(self) -> None:
        for sb in list(self.sandboxes.values()):
            self.terminate(sb.id, "the control plane stopped")
        await self.d.tunnels.close_all()


def _service(api: Api, body: dict[str, Any], caller: Caller) -> SandboxService:
    """The sandboxes, once ``caller`` may act on the one ``body`` names.

    A function's container (its token) may create and use the sandboxes of its own
    app, as Modal's functions do; another app's sandbox, or a running function's
    container, is not found for it.
    """
    service = api.d.sandboxes
    if service is None:
        raise InvalidError("this control plane runs no sandboxes")
    if caller.role != "container":
        return service
    if body.get("function_id") or body.get("app_id") not in (None, caller.app_id):
        raise PermissionDeniedError(
            "a container may use its own app's sandboxes, not another app's"
        )
    if "sandbox_id" in body or "name" in body:
        sb = service.sandboxes.get(str(body.get("sandbox_id")))
        if not body.get("sandbox_id") and body.get("name"):
            sb = service.by_name(str(body.get("app_name") or ""), str(body["name"]))
        if sb is None or sb.function or sb.app_id != caller.app_id:
            raise NotFoundError(f"no sandbox {body.get('sandbox_id') or body.get('name')!r}")
    return service


@rpc
async def SandboxCreate(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    names = {"app_id": body.get("app_id"), "function_id": body.get("function_id")}
    sb = await _service(api, names, caller).create(body, caller)
    return {"sandbox_id": sb.id}


@rpc
def SandboxGet(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return _service(api, body, caller).get(body).describe()


@rpc
def SandboxList(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    tags = dict(body.get("tags") or {})
    rows = [
        sb.describe()
        for sb in _service(api, body, caller).sandboxes.values()
        if not sb.done.is_set()
        and not sb.function
        and (body.get("app_id") or caller.app_id) in (None, sb.app_id)
        and all(sb.tags.get(k) == v for k, v in tags.items())
    ]
    return {"sandboxes": sorted(rows, key=lambda r: r["created_at"])}


@rpc
def SandboxTerminate(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    service = _service(api, body, caller)
    sb = service.get(body)
    if sb.function:
        raise InvalidError(
            f"{sb.id} is a function's container: stop it with `ketch container stop`"
        )
    service.terminate(sb.id)
    return {}


@rpc
async def SandboxWait(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return (await _service(api, body, caller).wait(body)).describe()


@rpc
def SandboxExec(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    service = _service(api, body, caller)
    service.check_secrets(caller, list(body.get("secrets") or []))
    return {"exec_id": service.exec(body)}


@rpc
async def SandboxExecRead(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return await _service(api, body, caller).read(body)


@rpc
def SandboxExecWrite(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    _service(api, body, caller).write(body)
    return {}


@rpc
async def SandboxExecWait(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return {"returncode": await _service(api, body, caller).wait_exec(body)}


@rpc
def SandboxExecResize(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    _service(api, body, caller).resize(body)
    return {}


@rpc
async def SandboxWaitReady(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return {"ready": await _service(api, body, caller).wait_ready(body)}


@rpc
async def SandboxTunnels(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return {"tunnels": await _service(api, body, caller).tunnels(body)}


@rpc
async def SandboxSnapshot(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    wire = await _service(api, body, caller).snapshot(body)
    if api.d.builds is not None:
        api.d.builds.remember(wire)  # for Image.from_id(image.object_id)
    return {"image": wire}


@rpc
async def SandboxFile(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return {"result": await _service(api, body, caller).file(body)}


@rpc
def SandboxSetTags(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    sb = _service(api, body, caller).get(body)
    sb.tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
    return {}


@rpc
async def InteractNext(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """The next interactive session of app ``app_id`` (``ketch run -i``), or none yet."""
    service = _service(api, {}, caller)
    app = api.resolve_app({"app_id": body["app_id"]})
    timeout = float(body.get("timeout", 0))
    return {"session": await service.next_session(app["id"], timeout)}
