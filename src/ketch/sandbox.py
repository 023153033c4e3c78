"""``ketch.Sandbox``: a container of an image that runs the commands you send it.

As Modal's ``modal.Sandbox``: create one from an image (with Secrets, Volumes,
limits and ``block_network``), run commands in it with ``exec`` (many at once),
read their output whole or line by line as it comes, write their stdin, wait
for them, and terminate it. The control plane keeps each command's output, so
reading never races the command. Every method has ``.aio``.

Example::

    app = ketch.App("sandboxes")
    with app.run():
        sb = ketch.Sandbox.create(app=app, image=ketch.Image.debian_slim())
        p = sb.exec("python3", "-c", "print(input()[::-1])")
        p.stdin.write("hello\\n")
        p.stdin.write_eof()
        print(p.stdout.read())      # "olleh\\n"
        print(p.wait())             # 0
        sb.terminate()
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _sync
from ._client import _Client
from ._config import in_container
from ._secret import check_secrets
from ._spec import FunctionSpec, build_options
from ._tunnel import Tunnel
from .exception import InvalidError

POLL_S = 50.0  # one server-side long poll
FILE_CHUNK = 8 << 20  # one file read or write request


class SandboxTimeoutError(InvalidError):
    """The sandbox ran past its ``timeout`` and was terminated."""


class SandboxTerminatedError(InvalidError):
    """The sandbox was terminated (by ``terminate()``, or its control plane stopped)."""


class ExecTimeoutError(InvalidError):
    """A command ran past the ``timeout`` it was given and was killed."""


@dataclass(frozen=True)
class Probe:
    """A sandbox's readiness probe (``Sandbox.create(readiness_probe=...)``): a TCP port that
    accepts connections, or a command that exits 0, tried every ``interval_ms``."""

    tcp_port: int | None = None
    exec_argv: tuple[str, ...] | None = None
    interval_ms: int = 100

    @classmethod
    def with_tcp(cls, port: int, *, interval_ms: int = 100) -> Probe:
        """Ready once something in the sandbox accepts connections on ``port``."""
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidError(f"Probe.with_tcp needs a port between 1 and 65535, not {port!r}")
        return cls(tcp_port=port, interval_ms=interval_ms)

    @classmethod
    def with_exec(cls, *argv: str, interval_ms: int = 100) -> Probe:
        """Ready once ``argv``, run in the sandbox, exits 0."""
        if not argv:
            raise InvalidError("Probe.with_exec needs a command, e.g. ('test', '-f', '/tmp/ok')")
        return cls(exec_argv=tuple(str(a) for a in argv), interval_ms=interval_ms)

    def _wire(self) -> dict[str, Any]:
        argv = list(self.exec_argv) if self.exec_argv else None
        return {"tcp_port": self.tcp_port, "exec_argv": argv, "interval_ms": self.interval_ms}


class _StreamReader:
    """A command's stdout or stderr: ``read()`` it whole, or iterate it line by line."""

    def __init__(self, sandbox_id: str, exec_id: str, fd: int, text: bool) -> None:
        self._sandbox_id, self._exec_id, self._fd, self._text = sandbox_id, exec_id, fd, text
        self._offset = 0
        self._eof = False

    async def _chunk(self) -> bytes:
        """The next piece of output (b"" at the end); waits for it."""
        client = await _Client.get()
        while not self._eof:
            reply = await client.rpc(
                "SandboxExecRead",
                {
                    "sandbox_id": self._sandbox_id,
                    "exec_id": self._exec_id,
                    "fd": self._fd,
                    "offset": self._offset,
                    "timeout": POLL_S,
                },
                timeout=POLL_S + 30,
            )
            self._offset, self._eof = int(reply["offset"]), bool(reply["eof"])
            if reply["data"]:
                return bytes(reply["data"])
        return b""

    def _out(self, data: bytes) -> Any:
        return data.decode(errors="replace") if self._text else data

    async def read(self) -> Any:
        """Everything the command writes to this stream, once it has closed it."""
        parts = []
        while chunk := await self._chunk():
            parts.append(chunk)
        return self._out(b"".join(parts))

    async def lines(self) -> AsyncIterator[Any]:
        """Each line as it arrives (with its newline); the last one may have none."""
        pending = b""
        while chunk := await self._chunk():
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for line in whole:
                yield self._out(line + b"\n")
        if pending:
            yield self._out(pending)


class _StreamWriter:
    """A command's stdin: ``write`` (str or bytes), ``write_eof``, ``drain``."""

    def __init__(self, sandbox_id: str, exec_id: str) -> None:
        self._sandbox_id, self._exec_id = sandbox_id, exec_id
        self._buffer = bytearray()

    def write(self, data: str | bytes) -> None:
        """Queue ``data``; it is sent by ``drain()`` (or ``write_eof()``)."""
        self._buffer += data.encode() if isinstance(data, str) else bytes(data)

    async def drain(self, eof: bool = False) -> None:
        """Send what was written."""
        data, self._buffer = bytes(self._buffer), bytearray()
        client = await _Client.get()
        body = {"sandbox_id": self._sandbox_id, "exec_id": self._exec_id, "data": data, "eof": eof}
        await client.rpc("SandboxExecWrite", body)

    async def write_eof(self) -> None:
        """Send what was written, then close the command's stdin."""
        await self.drain(eof=True)


class _ContainerProcess:
    """A command running in a sandbox (``Sandbox.exec``)."""

    def __init__(self, sandbox_id: str, exec_id: str, text: bool = True) -> None:
        self._sandbox_id, self._exec_id = sandbox_id, exec_id
        self._returncode: int | None = None
        # Handed out through properties, which give the public (blocking) classes.
        self._stdout = _StreamReader(sandbox_id, exec_id, 1, text)
        self._stderr = _StreamReader(sandbox_id, exec_id, 2, text)
        self._stdin = _StreamWriter(sandbox_id, exec_id)

    @property
    def stdout(self) -> Any:
        """Its standard output (a ``StreamReader``)."""
        return self._stdout

    @property
    def stderr(self) -> Any:
        """Its standard error (a ``StreamReader``)."""
        return self._stderr

    @property
    def stdin(self) -> Any:
        """Its standard input (a ``StreamWriter``)."""
        return self._stdin

    @property
    def returncode(self) -> int | None:
        """Its exit code once it has exited (from ``wait()`` or ``poll()``), else None."""
        return self._returncode

    async def _wait(self, timeout: float) -> int | None:
        client = await _Client.get()
        reply = await client.rpc(
            "SandboxExecWait",
            {"sandbox_id": self._sandbox_id, "exec_id": self._exec_id, "timeout": timeout},
            timeout=timeout + 30,
        )
        if reply["returncode"] is not None:
            self._returncode = int(reply["returncode"])
        return self._returncode

    async def wait(self) -> int:
        """Wait for it to exit; its exit code."""
        while (code := await self._wait(POLL_S)) is None:
            pass
        return code

    async def poll(self) -> int | None:
        """Its exit code if it has exited, else None (without waiting)."""
        return await self._wait(0.0)


class _FileIO:
    """A file in a sandbox (``Sandbox.open``): ``read``, ``write``, ``flush``, ``close``."""

    def __init__(self, sandbox: _Sandbox, path: str, mode: str) -> None:
        self._sandbox, self._path, self._mode = sandbox, path, mode
        self._binary = "b" in mode
        self._content = b""
        self._position = 0
        self._pending = bytearray()
        self._closed = False

    async def _load(self) -> None:
        parts, offset = [], 0
        while True:
            got = await self._sandbox._file("read", self._path, offset=offset, length=FILE_CHUNK)
            parts.append(bytes(got["data"]))
            offset += len(got["data"])
            if not got["data"] or offset >= got["size"]:
                break
        self._content = b"".join(parts)

    def _check(self, want: str) -> None:
        if self._closed:
            raise InvalidError(f"{self._path} is closed")
        if want == "read" and not self._mode.startswith("r"):
            raise InvalidError(f"{self._path} is open for writing ({self._mode!r})")
        if want == "write" and self._mode.startswith("r"):
            raise InvalidError(f"{self._path} is open for reading ({self._mode!r})")

    async def read(self, n: int = -1) -> Any:
        """The next ``n`` characters (bytes in ``b`` modes), or all that is left."""
        self._check("read")
        end = len(self._content) if n is None or n < 0 else self._position + n
        data = self._content[self._position : end]
        self._position += len(data)
        return data if self._binary else data.decode(errors="replace")

    async def write(self, data: str | bytes) -> None:
        """Add ``data`` (str in text modes, bytes in ``b`` modes)."""
        self._check("write")
        if isinstance(data, str) == self._binary:
            raise InvalidError(
                f"write {'bytes' if self._binary else 'str'} to {self._path} ({self._mode!r})"
            )
        self._pending += data.encode() if isinstance(data, str) else bytes(data)

    async def flush(self) -> None:
        """Send what was written to the sandbox."""
        if self._closed or self._mode.startswith("r"):
            return
        data, self._pending = bytes(self._pending), bytearray()
        for start in range(0, len(data), FILE_CHUNK):
            await self._sandbox._file(
                "write", self._path, data=data[start : start + FILE_CHUNK], append=True
            )

    async def close(self) -> None:
        """Flush and close."""
        await self.flush()
        self._closed = True


class _SandboxFilesystem:
    """``sb.filesystem``: whole files in and out of a sandbox, and its directories."""

    def __init__(self, sandbox: _Sandbox) -> None:
        self._sandbox = sandbox

    async def read_bytes(self, path: str) -> bytes:
        """The file at ``path``, whole."""
        f = _FileIO(self._sandbox, path, "rb")
        await f._load()
        return f._content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The file at ``path`` as text."""
        return (await self.read_bytes(path)).decode(encoding)

    async def write_bytes(self, path: str, data: bytes) -> None:
        """Make ``path`` hold ``data`` (created, or replaced)."""
        f = _FileIO(self._sandbox, path, "wb")
        await self._sandbox._file("write", path, data=b"")
        await f.write(bytes(data))
        await f.close()

    async def write_text(self, path: str, text: str, encoding: str = "utf-8") -> None:
        """Make ``path`` hold ``text``."""
        await self.write_bytes(path, text.encode(encoding))

    async def copy_from_local(self, local_path: str | os.PathLike[str], remote_path: str) -> None:
        """Copy a local file into the sandbox."""
        await self.write_bytes(remote_path, Path(local_path).read_bytes())

    async def copy_to_local(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy a file of the sandbox to a local path."""
        Path(local_path).write_bytes(await self.read_bytes(remote_path))

    async def list_files(self, path: str) -> builtins.list[str]:
        """The names in directory ``path``, sorted."""
        return builtins.list(await self._sandbox._file("ls", path))

    async def make_directory(self, path: str, parents: bool = True) -> None:
        """Make directory ``path`` (with its parents unless ``parents=False``)."""
        await self._sandbox._file("mkdir", path, parents=parents)

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory (empty, or with ``recursive=True``)."""
        await self._sandbox._file("rm", path, recursive=recursive)

    async def stat(self, path: str) -> dict[str, Any]:
        """``{"size", "mode", "mtime", "type"}`` of ``path`` (type: file, dir or symlink)."""
        return dict(await self._sandbox._file("stat", path))


class _Sandbox:
    """A running sandbox: ``create`` one, ``exec`` in it, ``terminate`` it."""

    def __init__(self, sandbox_id: str) -> None:
        self._id = sandbox_id
        self._returncode: int | None = None
        self._reason = ""
        self._process = _ContainerProcess(sandbox_id, "main")

    @property
    def filesystem(self) -> _SandboxFilesystem:
        """Whole files in and out, and directories: ``sb.filesystem.read_text(path)``..."""
        return _SandboxFilesystem(self)

    @property
    def stdout(self) -> Any:
        """The main command's standard output (``Sandbox.create(*cmd)``)."""
        return self._process.stdout

    @property
    def stderr(self) -> Any:
        """The main command's standard error."""
        return self._process.stderr

    @property
    def stdin(self) -> Any:
        """The main command's standard input."""
        return self._process.stdin

    def __repr__(self) -> str:
        return f"_Sandbox({self._id!r})"

    @property
    def object_id(self) -> str:
        return self._id

    @property
    def returncode(self) -> int | None:
        """The main command's exit code (or 137 if terminated) once finished, else None."""
        return self._returncode

    @staticmethod
    async def create(
        *cmd: str,
        app: Any = None,
        image: Any = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] = (),
        volumes: dict[str, Any] | None = None,
        workdir: str | None = None,
        timeout: float = 300,
        idle_timeout: float | None = None,
        cpu: Any = None,
        memory: Any = None,
        gpu: Any = None,
        block_network: bool = False,
        readiness_probe: Probe | None = None,
        encrypted_ports: Sequence[int] = (),
        unencrypted_ports: Sequence[int] = (),
        h2_ports: Sequence[int] = (),
        pty: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
        inbound_cidr_allowlist: Sequence[str] | None = None,
        verbose: bool = False,
        cloud: str | None = None,
        region: str | Sequence[str] | None = None,
        environment_name: str | None = None,
        client: Any = None,
        **unknown: Any,
    ) -> _Sandbox:
        """Start a sandbox of ``image`` in ``app`` (a running app: inside ``app.run()``, or
        deployed; inside a function, its own app by default); with ``cmd`` it runs that
        command and ends when it exits.

        ``verbose``, ``cloud``, ``region``, ``environment_name`` and ``client`` are
        accepted for Modal's sake and change nothing on one node. ``outbound_cidr_allowlist``
        gives the sandbox a network of its own with a way out to those networks only;
        domain and inbound allowlists are refused."""
        from .app import (
            _build_images,
            _check_image,
            _image_wire,
            check_volumes,
            secret_entries,
            volume_entries,
        )

        if unknown:
            raise InvalidError(f"Sandbox.create() does not take {', '.join(sorted(unknown))}")
        refused = {
            "outbound_domain_allowlist": outbound_domain_allowlist,
            "inbound_cidr_allowlist": inbound_cidr_allowlist,
        }
        if given := [name for name, value in refused.items() if value is not None]:
            raise InvalidError(
                f"Sandbox.create({given[0]}=...): ketch does not filter a sandbox's network by "
                "domain or source yet; outbound_cidr_allowlist= allows destinations by address"
            )
        allowlist = (
            outbound_cidr_allowlist if outbound_cidr_allowlist is not None else cidr_allowlist
        )
        if allowlist is not None and (
            isinstance(allowlist, str) or not all(isinstance(n, str) for n in allowlist)
        ):
            raise InvalidError(
                "outbound_cidr_allowlist must be a list of networks like '10.0.0.0/8'"
            )
        app_id = getattr(app, "app_id", None)
        if app is None and in_container():  # inside a function: its own app, as in Modal
            app_id = os.environ.get("KETCH_APP_ID")
        if not app_id:
            raise InvalidError(
                "Sandbox.create needs app= a running app: call it inside `with app.run():`"
            )
        _check_image(image)
        if readiness_probe is not None and not isinstance(readiness_probe, Probe):
            raise InvalidError("readiness_probe must be a ketch.Probe (Probe.with_tcp(port), ...)")
        ports = [*encrypted_ports, *unencrypted_ports, *h2_ports]
        for port in ports:
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidError(f"ports must be numbers between 1 and 65535, not {port!r}")
        options = build_options(env=env or {}, gpu=gpu, cpu=cpu, memory=memory)
        spec = FunctionSpec(tag="sandbox", module_name="", qualname="sandbox", **options)
        spec.image = _image_wire(image)
        spec.block_network = bool(block_network)
        client = await _Client.get()
        await _build_images(client, [spec])
        spec.secrets = await secret_entries(client, check_secrets(list(secrets)))
        spec.volumes = await volume_entries(check_volumes(volumes or {}))
        body = {
            "app_id": app_id,
            "spec": spec.to_wire(),
            "cmd": [str(c) for c in cmd],
            "timeout": float(timeout),
            "idle_timeout": float(idle_timeout) if idle_timeout else None,
            "workdir": workdir,
            "name": name,
            "tags": dict(tags or {}),
            "probe": readiness_probe._wire() if readiness_probe else None,
            "ports": ports,
            "pty": bool(pty),
            "allowlist": list(allowlist) if allowlist is not None else None,
        }
        reply = await client.rpc("SandboxCreate", body, timeout=3600)
        return _Sandbox(reply["sandbox_id"])

    @staticmethod
    async def _for_function(app: Any, function: Any, timeout: float = 300) -> _Sandbox:
        """A sandbox that is a new container of ``function`` (``ketch shell FILE::function``):
        its image, Secrets, Volumes, resources and source, with no input to run."""
        client = await _Client.get()
        body = {
            "app_id": app.app_id,
            "spec": FunctionSpec(tag="sandbox", module_name="", qualname="sandbox").to_wire(),
            "function_id": await function._resolve(),
            "timeout": float(timeout),
        }
        reply = await client.rpc("SandboxCreate", body, timeout=3600)
        return _Sandbox(reply["sandbox_id"])

    @staticmethod
    async def from_name(app_name: str, name: str) -> _Sandbox:
        """The running sandbox created with ``name=`` in the running app ``app_name``."""
        client = await _Client.get()
        info = await client.rpc("SandboxGet", {"app_name": app_name, "name": name})
        sb = _Sandbox(info["sandbox_id"])
        sb._note(info)
        return sb

    async def set_tags(self, tags: dict[str, str]) -> None:
        """Replace the sandbox's tags (``Sandbox.list(tags=)`` finds it by them)."""
        client = await _Client.get()
        await client.rpc("SandboxSetTags", {"sandbox_id": self._id, "tags": dict(tags)})

    async def get_tags(self) -> dict[str, str]:
        """The sandbox's tags."""
        client = await _Client.get()
        return dict((await client.rpc("SandboxGet", {"sandbox_id": self._id}))["tags"])

    @staticmethod
    async def from_id(sandbox_id: str) -> _Sandbox:
        """The sandbox with this id (``sb.object_id``)."""
        client = await _Client.get()
        info = await client.rpc("SandboxGet", {"sandbox_id": sandbox_id})
        sb = _Sandbox(info["sandbox_id"])
        sb._note(info)
        return sb

    @staticmethod
    async def list(
        *, app_id: str | None = None, tags: dict[str, str] | None = None
    ) -> AsyncIterator[_Sandbox]:
        """Running sandboxes (of one app, with these tags)."""
        client = await _Client.get()
        reply = await client.rpc("SandboxList", {"app_id": app_id, "tags": dict(tags or {})})
        for info in reply["sandboxes"]:
            yield _Sandbox(info["sandbox_id"])

    def _note(self, info: dict[str, Any]) -> None:
        if info.get("done"):
            self._returncode = info.get("returncode")
            self._reason = info.get("reason") or ""

    async def exec(
        self,
        *args: str,
        workdir: str | None = None,
        env: dict[str, str | None] | None = None,
        timeout: float | None = None,
        text: bool = True,
        secrets: Sequence[Any] = (),
        pty: bool | dict[str, int] = False,
        **unknown: Any,
    ) -> _ContainerProcess:
        """Run ``args`` in the sandbox (as its root, in ``workdir``); returns at once.

        ``secrets`` add their variables (``env`` wins over them); ``pty=True`` (or
        ``{"rows", "cols"}``) runs it on a terminal, its output all on ``stdout``."""
        from .app import secret_entries

        if unknown:
            raise InvalidError(f"Sandbox.exec() does not take {', '.join(sorted(unknown))}")
        if not args:
            raise InvalidError("exec needs a command, e.g. sb.exec('ls', '-l')")
        client = await _Client.get()
        body = {
            "sandbox_id": self._id,
            "argv": [str(a) for a in args],
            "workdir": workdir,
            "env": dict(env or {}),
            "timeout": timeout,
            "secrets": await secret_entries(client, check_secrets(list(secrets))),
            "pty": pty or False,
        }
        reply = await client.rpc("SandboxExec", body)
        return _ContainerProcess(self._id, reply["exec_id"], text)

    async def _wait_once(self, timeout: float) -> bool:
        client = await _Client.get()
        info = await client.rpc(
            "SandboxWait", {"sandbox_id": self._id, "timeout": timeout}, timeout=timeout + 30
        )
        self._note(info)
        return bool(info.get("done"))

    async def wait(self, raise_on_termination: bool = True) -> None:
        """Wait for the sandbox to finish (its command exits, it times out or is terminated)."""
        while not await self._wait_once(POLL_S):
            pass
        if raise_on_termination and ("timed out" in self._reason or "idle" in self._reason):
            raise SandboxTimeoutError(f"sandbox {self._id} {self._reason}")
        if raise_on_termination and "terminated" in self._reason:
            raise SandboxTerminatedError(f"sandbox {self._id} {self._reason}")

    async def poll(self) -> int | None:
        """The return code if the sandbox has finished, else None (without waiting)."""
        await self._wait_once(0.0)
        return self._returncode

    async def wait_until_ready(self, *, timeout: float = 300.0) -> None:
        """Wait for the ``readiness_probe`` to pass (``TimeoutError`` after ``timeout`` s)."""
        client = await _Client.get()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            wait = min(left, POLL_S)
            reply = await client.rpc(
                "SandboxWaitReady", {"sandbox_id": self._id, "timeout": wait}, timeout=wait + 30
            )
            if reply["ready"]:
                return
        raise TimeoutError(f"sandbox {self._id} was not ready within {timeout:g} s")

    async def tunnels(self, timeout: float = 50.0) -> dict[int, Tunnel]:
        """Its ``encrypted_ports``/``unencrypted_ports``, each with the ``Tunnel`` reaching it."""
        client = await _Client.get()
        reply = await client.rpc(
            "SandboxTunnels", {"sandbox_id": self._id, "timeout": timeout}, timeout=timeout + 30
        )
        return {int(t["port"]): Tunnel._from_wire(t) for t in reply["tunnels"]}

    async def snapshot_filesystem(self, timeout: float = 55.0) -> Any:
        """Its filesystem as it is now, as an ``Image`` for functions and new sandboxes
        (a layer in the image cache over its image's)."""
        from .image import Image

        client = await _Client.get()
        reply = await client.rpc(
            "SandboxSnapshot", {"sandbox_id": self._id}, timeout=max(timeout, 600)
        )
        return Image.from_wire(reply["image"])

    # -- files ---------------------------------------------------------------
    async def _file(self, op: str, path: str, **fields: Any) -> Any:
        client = await _Client.get()
        reply = await client.rpc(
            "SandboxFile", {"sandbox_id": self._id, "op": op, "path": path, **fields}
        )
        return reply["result"]

    async def ls(self, path: str) -> builtins.list[str]:
        """The names in directory ``path`` of the sandbox, sorted."""
        return builtins.list(await self._file("ls", path))

    async def mkdir(self, path: str, parents: bool = False) -> None:
        """Make directory ``path`` (and its parents, with ``parents=True``)."""
        await self._file("mkdir", path, parents=parents)

    async def rm(self, path: str, recursive: bool = False) -> None:
        """Remove file ``path`` (a directory: empty, or with ``recursive=True``)."""
        await self._file("rm", path, recursive=recursive)

    async def open(self, path: str, mode: str = "r") -> _FileIO:
        """A file of the sandbox: ``r``/``rb`` to read, ``w``/``wb``/``a``/``ab`` to write
        (sent on ``flush()`` and ``close()``, as in Modal); use it in a ``with`` block."""
        if mode.replace("b", "") not in ("r", "w", "a") or mode.count("b") > 1:
            raise InvalidError(f"open mode {mode!r}: use r, w or a, with b for bytes")
        f = _FileIO(self, path, mode)
        if mode.startswith("w"):
            await self._file("write", path, data=b"")  # created (or emptied) now, as open() does
        elif mode.startswith("r"):
            await f._load()
        return f

    def detach(self) -> None:
        """Let go of the sandbox without stopping it (Modal's; ketch's client holds no
        connection per sandbox, so there is nothing to close)."""

    async def terminate(self) -> None:
        """Stop the sandbox and every command in it."""
        client = await _Client.get()
        await client.rpc("SandboxTerminate", {"sandbox_id": self._id})


StreamReader = _sync.synchronize_api(_StreamReader, "StreamReader")
StreamWriter = _sync.synchronize_api(_StreamWriter, "StreamWriter")
ContainerProcess = _sync.synchronize_api(_ContainerProcess, "ContainerProcess")
FileIO = _sync.synchronize_api(_FileIO, "FileIO")
SandboxFilesystem = _sync.synchronize_api(_SandboxFilesystem, "SandboxFilesystem")
FileIO.__enter__ = lambda self: self  # type: ignore[attr-defined]
FileIO.__exit__ = lambda self, *exc: self.close()  # type: ignore[attr-defined]
Sandbox = _sync.synchronize_api(_Sandbox, "Sandbox")
StreamReader.__iter__ = lambda self: iter(self.lines())  # type: ignore[attr-defined]
