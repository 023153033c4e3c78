"""This terminal, connected to a command's pseudo-terminal in a container.

``ketch shell``, ``ketch container exec --pty`` and ``ketch run -i`` (a
``breakpoint()`` in remote code) use it: the terminal goes into raw mode, keys
are sent as they are typed (Ctrl-C included), output is written as it comes,
and the window size follows this one's (``SIGWINCH``, where the event loop runs
on the main thread).

Example::

    with raw_terminal():
        code = await Attached(client, sandbox_id, exec_id).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import termios
import tty
from typing import Any

from ._client import _Client
from .sandbox import _StreamReader


def terminal_size() -> dict[str, int]:
    """This terminal's window size (the terminal's own, not ``$COLUMNS``/``$LINES``)."""
    for stream in (sys.stdin, sys.stdout):
        try:
            cols, rows = os.get_terminal_size(stream.fileno())
            return {"rows": rows, "cols": cols}
        except (OSError, ValueError, AttributeError):
            continue
    cols, rows = shutil.get_terminal_size((80, 24))
    return {"rows": rows, "cols": cols}


class Attached:
    """This terminal, connected to a pty command: keys in as typed, output out, window size."""

    def __init__(self, client: _Client, sandbox_id: str, exec_id: str) -> None:
        self.client = client
        self.ids = {"sandbox_id": sandbox_id, "exec_id": exec_id}
        self.loop = asyncio.get_running_loop()
        self.keys: asyncio.Queue[bytes] = asyncio.Queue()
        self.stdin = sys.stdin.fileno()
        self.tasks: set[asyncio.Task[Any]] = set()

    def typed(self) -> None:
        try:
            data = os.read(self.stdin, 4096)
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.stdin)
        self.keys.put_nowait(data)

    async def send_keys(self) -> None:
        while True:
            data = await self.keys.get()
            while data and not self.keys.empty():  # what was typed meanwhile, in one request
                more = self.keys.get_nowait()
                data += more
                if not more:
                    break
            body = {**self.ids, "data": data, "eof": not data}
            await self.client.rpc("SandboxExecWrite", body)
            if not data:
                return

    def resized(self) -> None:
        task = self.loop.create_task(
            self.client.rpc("SandboxExecResize", {**self.ids, **terminal_size()})
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def show_output(self) -> None:
        out = _StreamReader(self.ids["sandbox_id"], self.ids["exec_id"], 1, text=False)
        while chunk := await out._chunk():
            os.write(sys.stdout.fileno(), chunk)

    async def run(self) -> int:
        """Until the command exits; its exit code."""
        self.loop.add_reader(self.stdin, self.typed)
        # Signal handlers need the main thread's loop; elsewhere the size is set once.
        with contextlib.suppress(RuntimeError, ValueError):
            self.loop.add_signal_handler(signal.SIGWINCH, self.resized)
        sender = self.loop.create_task(self.send_keys())
        try:
            await self.show_output()
        finally:
            sender.cancel()
            self.loop.remove_reader(self.stdin)
            with contextlib.suppress(RuntimeError, ValueError):
                self.loop.remove_signal_handler(signal.SIGWINCH)
        while True:
            body = {**self.ids, "timeout": 30}
            reply = await self.client.rpc("SandboxExecWait", body, timeout=60)
            if reply["returncode"] is not None:
                return int(reply["returncode"])


@contextlib.contextmanager
def raw_terminal() -> Any:
    """This terminal in raw mode (keys as typed, no echo) while inside; as it was after."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def attend(client: _Client, app_id: str) -> None:
    """``app.run(interactive=True)``: attach this terminal to each interactive session a
    container of the app opens (a ``breakpoint()``, ``ketch.interact()``), one at a time."""
    while True:
        try:
            reply = await client.rpc("InteractNext", {"app_id": app_id, "timeout": 30}, timeout=60)
        except asyncio.CancelledError:
            raise
        except Exception:
            await asyncio.sleep(0.5)
            continue
        session = reply.get("session")
        if not session:
            continue
        sys.stderr.write(
            f"\r\n[ketch] attached to {session['container_id']} (its session ends with it)\r\n"
        )
        sys.stderr.flush()
        with raw_terminal():
            with contextlib.suppress(Exception):
                await Attached(client, session["container_id"], session["exec_id"]).run()
        sys.stderr.write(f"[ketch] detached from {session['container_id']}\n")
        sys.stderr.flush()
