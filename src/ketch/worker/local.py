"""The ``local`` runtime: each container is an OS process on the host Python.

No isolation: containers see the host filesystem and network. It is for dev
loops and machines without bubblewrap, and ``ketch server status`` says so.

Containers are forked from a warm template process (``ketch.guest.template``)
that has already imported ketch, which takes most of the interpreter start-up
out of a cold start. If the template cannot be used, a container is a fresh
``python -m ketch.guest`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .._spec import FunctionSpec
from .._tasks import spawn
from ._template import TemplateProcess

logger = logging.getLogger(__name__)

LogSink = Callable[[str, str, str], None]  # container id, stream, text
ExitSink = Callable[[str, str], None]  # container id, reason


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "was lost (its parent process died)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = {
            "SIGKILL": " (killed, possibly out of memory)",
            "SIGSEGV": " (segmentation fault)",
        }.get(name, "")
        return f"killed by {name}{hint}"
    return f"exited with code {returncode}"


def limits_asked(spec: FunctionSpec) -> list[str]:
    """The resource limits ``spec`` asks for (a bare ``memory=``/``cpu=`` is a request only)."""
    asked = []
    if spec.memory and spec.memory[1]:
        asked.append("memory")
    if spec.cpu and spec.cpu[1]:
        asked.append("cpu")
    return asked


def signal_group(pid: int, sig: int) -> None:
    """Signal a container's process group (each container leads its own), if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def terminate_all(
    running: Mapping[str, object], terminate: Callable[[str, float], None], grace: float
) -> None:
    """Ask every container in ``running`` to stop, then wait (``grace`` + 1 s at most) until
    the worker has seen them all exit."""
    for container_id in list(running):
        terminate(container_id, grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace + 1
    while running and loop.time() < deadline:
        await asyncio.sleep(0.05)


def pump_lines(reader: asyncio.StreamReader, sink: Callable[[str], None]) -> asyncio.Task[None]:
    """A task that hands ``sink`` each line ``reader`` yields (with its newline), until EOF."""

    async def pump() -> None:
        pending = b""
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                if pending:
                    sink(pending.decode(errors="replace"))
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                sink(line.decode(errors="replace") + "\n")

    return asyncio.get_running_loop().create_task(pump())


@dataclass
class _Proc:
    pid: int
    exited: Awaitable[int | None]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class LocalWorker:
    """Starts, stops and watches container processes."""

    name = "local"
    why_not_sandbox = ""  # set when the sandbox runtime was wanted (auto) but cannot run here

    @property
    def isolation(self) -> str:
        why = f"; the sandbox runtime cannot run here: {self.why_not_sandbox}"
        return (
            "none (local runtime: containers are host processes; images are not applied and "
            f"memory/cpu limits are NOT enforced{why if self.why_not_sandbox else ''})"
        )

    # A read-only Volume mount is a read-only bind only as root (runtime.mounts).
    enforces_read_only = os.geteuid() == 0

    def __init__(self, on_log: LogSink, on_exit: ExitSink, use_template: bool = True) -> None:
        self._on_log = on_log
        self._on_exit = on_exit
        self._procs: dict[str, _Proc] = {}
        self._template: TemplateProcess | None = (
            TemplateProcess(self._base_env()) if use_template else None
        )

    def running(self) -> int:
        return len(self._procs)

    def unenforced(self, spec: FunctionSpec) -> list[str]:
        """What ``spec`` asks that this runtime cannot hold (told to the user, never silent)."""
        why = "is not enforced: the local runtime's containers are host processes"
        out = []
        if spec.block_network:
            out.append(f"block_network=True {why}, on the host's network")
        for limit in limits_asked(spec):
            out.append(f"the {limit} limit {why}, without cgroups")
        if spec.ephemeral_disk:
            out.append(f"ephemeral_disk= {why}, writing to the host's disk")
        return out

    @staticmethod
    def _base_env() -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KETCH_HOME", None)
        return env

    async def start(
        self,
        container_id: str,
        env: dict[str, str],
        spec: FunctionSpec,
        mounts: Sequence[tuple[str, str, bool]] = (),
    ) -> None:
        cwd = spec.root_dir
        if mounts:  # applied by the container itself (ketch.guest.mounts)
            env = {**env, "KETCH_VOLUME_MOUNTS": json.dumps([list(m) for m in mounts])}
        proc = None
        if self._template is not None:
            try:
                pid, out, err, exited = await self._template.spawn(container_id, env, cwd)
                proc = _Proc(
                    pid,
                    exited,
                    [
                        self._pump(container_id, "stdout", out),
                        self._pump(container_id, "stderr", err),
                    ],
                )
            except Exception as exc:  # fall back to a fresh interpreter
                logger.warning("template process unusable (%s); starting containers fresh", exc)
                template, self._template = self._template, None
                await template.close()
        if proc is None:
            proc = await self._start_fresh(container_id, env, cwd)
        self._procs[container_id] = proc
        spawn(self._wait(container_id, proc), name=f"wait {container_id}")

    async def _start_fresh(self, container_id: str, env: dict[str, str], cwd: str | None) -> _Proc:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # the app folder (cwd) must not shadow the standard library for ketch
            "-m",
            "ketch.guest",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**self._base_env(), **env},
            cwd=cwd if cwd and os.path.isdir(cwd) else None,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        tasks = [
            self._pump(container_id, "stdout", process.stdout),
            self._pump(container_id, "stderr", process.stderr),
        ]
        return _Proc(process.pid, process.wait(), tasks)

    def _pump(
        self, container_id: str, stream: str, reader: asyncio.StreamReader
    ) -> asyncio.Task[None]:
        return pump_lines(reader, lambda text: self._on_log(container_id, stream, text))

    async def _wait(self, container_id: str, proc: _Proc) -> None:
        returncode = await proc.exited
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*proc.tasks, return_exceptions=True), 2.0)
        self._procs.pop(container_id, None)
        self._on_exit(container_id, describe_exit(returncode))

    def terminate(self, container_id: str, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds if it is still there."""
        proc = self._procs.get(container_id)
        if proc is None:
            return
        self._signal(proc, signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self.kill, container_id)

    def kill(self, container_id: str) -> None:
        proc = self._procs.get(container_id)
        if proc is not None:
            self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: _Proc, sig: int) -> None:
        signal_group(proc.pid, sig)

    async def shutdown(self, grace: float = 5.0) -> None:
        await terminate_all(self._procs, self.terminate, grace)
        if self._template is not None:
            await self._template.close()
