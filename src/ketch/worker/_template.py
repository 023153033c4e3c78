"""The worker's side of the template process that forks containers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import msgpack

from ..exception import ExecutionError

START_TIMEOUT_S = 30.0


class TemplateProcess:
    """Starts ``ketch.guest.template`` on first use and asks it for forks."""

    def __init__(self, env: dict[str, str], argv: Any = None) -> None:
        self._env = env
        # argv(extra_env) -> (argv, fds to pass, close once started): how to start it
        # (a sandbox's template, ketch.worker.forks); None: this Python, here.
        self._argv = argv
        self._sock: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Future[None] | None = None
        self._spawned: dict[str, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._prepared: asyncio.Future[dict[str, Any]] | None = None

    async def _ensure(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_future()
            try:
                await self._start()
                self._starting.set_result(None)
            except BaseException as exc:
                self._starting.set_exception(exc)
                self._starting = None
                raise
        else:
            await self._starting
        assert self._sock is not None
        return self._sock

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                if self._argv is not None:
                    argv, fds, close = self._argv({"KETCH_TEMPLATE_FD": str(theirs.fileno())})
                    try:
                        self._process = await asyncio.create_subprocess_exec(
                            *argv,
                            stdin=asyncio.subprocess.DEVNULL,
                            pass_fds=[theirs.fileno(), *fds],
                            start_new_session=True,
                            umask=0o022,  # as a container's (bubblewrap.CONTAINER_UMASK)
                        )
                    finally:
                        close()
                else:
                    self._process = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-P",
                        "-m",
                        "ketch.guest.template",
                        stdin=asyncio.subprocess.DEVNULL,
                        env={**self._env, "KETCH_TEMPLATE_FD": str(theirs.fileno())},
                        pass_fds=[theirs.fileno()],
                        start_new_session=True,
                    )
            finally:
                theirs.close()
            ours.setblocking(False)
            hello = await asyncio.wait_for(loop.sock_recv(ours, 1 << 16), START_TIMEOUT_S)
            if not hello or msgpack.unpackb(hello, raw=False).get("t") != "ready":
                raise ExecutionError("the template process did not start")
        except BaseException:
            ours.close()
            await self._stop_process()
            raise
        self._sock = ours
        self._reader = loop.create_task(self._read(ours))

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(sock, 1 << 16)
                if not data:
                    break
                self._dispatch(msgpack.unpackb(data, raw=False))
        except OSError:
            pass
        finally:
            # The template is gone (or we are closing); its forks died with it
            # (parent-death signal). The reader owns the socket: closing it under a
            # pending sock_recv would leave the loop watching a closed descriptor.
            sock.close()
            self._sock = None
            self._starting = None
            for spawned in self._spawned.values():
                if not spawned.done():
                    spawned.set_exception(ExecutionError("the template process exited"))
            if self._prepared is not None and not self._prepared.done():
                self._prepared.set_result(
                    {"t": "prepare_failed", "error": "the template process exited"}
                )
            for exited in self._exits.values():
                if not exited.done():
                    exited.set_result(None)
            self._spawned.clear()
            self._exits.clear()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg["t"] in ("prepared", "prepare_failed"):
            if self._prepared is not None and not self._prepared.done():
                self._prepared.set_result(msg)
        elif msg["t"] == "spawned":
            fut = self._spawned.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(int(msg["pid"]))
        elif msg["t"] == "exited":
            exit_fut = self._exits.pop(int(msg["pid"]), None)
            if exit_fut is None:
                exit_fut = asyncio.get_running_loop().create_future()
                self._exits[int(msg["pid"])] = exit_fut  # exited before we asked; keep the answer
            if not exit_fut.done():
                exit_fut.set_result(msg["returncode"])

    async def prepare(
        self, request: dict[str, Any], timeout: float
    ) -> tuple[dict[str, Any], asyncio.StreamReader, asyncio.StreamReader]:
        """Have the template prepare a memory snapshot (``ketch.guest.zygote``); returns
        its reply, and readers of what the user's code printed meanwhile (until the reply).
        """
        sock = await self._ensure()
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._prepared = loop.create_future()
        try:
            msg = msgpack.packb({**request, "t": "prepare"}, use_bin_type=True)
            socket.send_fds(sock, [msg], [out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        out, err = await _reader(out_r), await _reader(err_r)
        try:
            reply = await asyncio.wait_for(self._prepared, timeout)
        except TimeoutError:
            reply = {"t": "prepare_failed", "error": f"the snapshot took over {timeout:.0f} s"}
        finally:
            self._prepared = None
        return reply, out, err

    async def start(self) -> None:
        """Start the template now (else the first spawn does)."""
        await self._ensure()

    async def spawn(
        self,
        container_id: str,
        env: dict[str, str],
        cwd: str | None,
        extra: dict[str, Any] | None = None,
        fds: Sequence[int] = (),
    ) -> tuple[int, asyncio.StreamReader, asyncio.StreamReader, asyncio.Future[int | None]]:
        """Fork a container; returns its pid, stdout and stderr readers, and its exit code
        future. ``extra``: more of the request; ``fds``: more descriptors for the fork."""
        sock = await self._ensure()
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        spawned: asyncio.Future[int] = loop.create_future()
        self._spawned[container_id] = spawned
        try:
            request = msgpack.packb(
                {**(extra or {}), "t": "spawn", "id": container_id, "env": env, "cwd": cwd},
                use_bin_type=True,
            )
            socket.send_fds(sock, [request], [out_w, err_w, *fds])
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            pid = await asyncio.wait_for(spawned, START_TIMEOUT_S)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        exited = self._exits.get(pid)
        if exited is None:
            exited = self._exits[pid] = loop.create_future()
        return pid, await _reader(out_r), await _reader(err_r), exited

    async def close(self) -> None:
        await self._stop_process()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])  # its finally closes the socket
            self._reader = None

    async def _stop_process(self) -> None:
        if self._process is None:
            return
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await self._process.wait()
        self._process = None


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    return reader
