"""The ``local`` runtime: each container is an OS process on the host Python.

No isolation: containers see the host filesystem and network. It is for dev
loops and machines without bubblewrap, and ``ketch server status`` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LogSink = Callable[[str, str, str], None]  # container id, stream, text
ExitSink = Callable[[str, str], None]  # container id, reason


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "lost"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = {"SIGKILL": " (killed, possibly out of memory)", "SIGSEGV": " (segmentation fault)"}.get(name, "")
        return f"killed by {name}{hint}"
    return f"exited with code {returncode}"


@dataclass
class _Proc:
    process: asyncio.subprocess.Process
    tasks: list[asyncio.Task[None]]


class LocalWorker:
    """Starts, stops and watches container processes."""

    name = "local"
    isolation = "none (local runtime: containers are host processes)"

    def __init__(self, on_log: LogSink, on_exit: ExitSink) -> None:
        self._on_log = on_log
        self._on_exit = on_exit
        self._procs: dict[str, _Proc] = {}

    def running(self) -> int:
        return len(self._procs)

    async def start(self, container_id: str, env: dict[str, str], cwd: str | None) -> None:
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        full_env.pop("KETCH_HOME", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ketch.runtime",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            cwd=cwd if cwd and os.path.isdir(cwd) else None,
            start_new_session=True,
        )
        proc = _Proc(process, [])
        self._procs[container_id] = proc
        assert process.stdout is not None and process.stderr is not None
        proc.tasks = [
            asyncio.create_task(self._pump(container_id, "stdout", process.stdout)),
            asyncio.create_task(self._pump(container_id, "stderr", process.stderr)),
        ]
        asyncio.create_task(self._wait(container_id, proc))

    async def _pump(self, container_id: str, stream: str, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            self._on_log(container_id, stream, line.decode(errors="replace"))

    async def _wait(self, container_id: str, proc: _Proc) -> None:
        returncode = await proc.process.wait()
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, sig)

    async def shutdown(self, grace: float = 5.0) -> None:
        for cid in list(self._procs):
            self.terminate(cid, grace)
        deadline = asyncio.get_running_loop().time() + grace + 1
        while self._procs and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
