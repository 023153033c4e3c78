"""Interactive sessions in a function's container: ``breakpoint()`` and ``ketch.interact()``.

Under ``ketch run -i`` (``app.run(interactive=True)``) a container's functions
get ``KETCH_INTERACTIVE=1``. A session is a pseudo-terminal made in the
container: the sandbox agent (:mod:`ketch.guest.sandbox`) streams its output and
types what the user types into it, like a command's terminal, and the control
plane hands it to the client waiting on the app (``InteractNext``), which
attaches the user's terminal (:mod:`ketch._terminal`).

* ``breakpoint()`` opens a session and runs pdb on it, in the calling frame;
  the session ends when pdb continues with no breakpoints left, or quits.
* ``ketch.interact()`` opens one for the rest of the container's life and makes
  it ``sys.stdin``, so ``input()`` reads what the user types (its prompt is
  written to the terminal: the container's stdout is its logs, shown by line).

Without ``-i``, ``breakpoint()`` says how to get one and goes on (the container
has no terminal: pdb would read end-of-file and quit the call). A breakpoint
while the container starts (in ``@enter``) is passed over the same way: its
channel is not read until the container serves inputs.
"""

from __future__ import annotations

import builtins
import os
import pdb
import secrets
import sys
import threading
from typing import Any

from .._wire import BlockingChannel

_state: dict[str, Any] = {"chan": None, "agent": None, "serving": False, "stdin": None}
_lock = threading.Lock()


def install(chan: BlockingChannel) -> None:
    """Called by the guest loop once connected: breakpoint() goes through here."""
    _state["chan"] = chan
    sys.breakpointhook = breakpoint_hook


def serving() -> None:
    """The guest loop reads its channel from now on: sessions can take input."""
    _state["serving"] = True


def started() -> bool:
    """Whether a command or session ever ran here (there is an agent to stop)."""
    return _state["agent"] is not None


def agent() -> Any:
    """The container's command agent (one for commands and sessions)."""
    with _lock:
        if _state["agent"] is None:
            from .sandbox import Agent

            _state["agent"] = Agent(_state["chan"])
        return _state["agent"]


def _interactive() -> bool:
    return os.environ.get("KETCH_INTERACTIVE") == "1" and _state["chan"] is not None


class Session:
    """A terminal in this container that the user's is attached to."""

    def __init__(self) -> None:
        terminal, self.follower = os.openpty()
        self.exec_id = "in-" + secrets.token_hex(8)
        self.reader = open(self.follower, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        self.writer = open(self.follower, "w", buffering=1, closefd=False)  # noqa: SIM115
        agent().adopt(self.exec_id, terminal)
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.flush()
            os.close(self.follower)  # the agent sees the end and reports it


class _Pdb(pdb.Pdb):
    """pdb on a session; continuing with no breakpoints left, or quitting, ends it."""

    def __init__(self, session: Session) -> None:
        super().__init__(stdin=session.reader, stdout=session.writer)
        self.use_rawinput = False
        self.session = session

    def do_continue(self, arg: str) -> Any:
        result = super().do_continue(arg)
        if not self.breaks:
            self.session.close()
        return result

    do_c = do_cont = do_continue

    def do_quit(self, arg: str) -> Any:
        result = super().do_quit(arg)
        self.session.close()
        return result

    do_q = do_exit = do_quit

    def do_EOF(self, arg: str) -> Any:  # noqa: N802 (pdb's name)
        return self.do_quit(arg)


def breakpoint_hook(*args: Any, **kwargs: Any) -> None:
    where = sys._getframe(1)
    place = f"{where.f_code.co_filename}:{where.f_lineno}"
    if not _interactive():
        sys.stderr.write(
            f"ketch: breakpoint() at {place} passed over: run the app with `ketch run -i` "
            "(app.run(interactive=True)) to debug it from your terminal\n"
        )
        return
    if not _state["serving"]:
        sys.stderr.write(
            f"ketch: breakpoint() at {place} passed over: a container takes a debugger "
            "once it serves inputs, not while it starts (@enter)\n"
        )
        return
    _Pdb(Session()).set_trace(where)


def interact() -> None:
    """This container's ``sys.stdin`` becomes the user's terminal (``ketch run -i``)."""
    if not _interactive():
        sys.stderr.write(
            "ketch: interact() does nothing without `ketch run -i` "
            "(app.run(interactive=True)): the container has no terminal\n"
        )
        return
    if not _state["serving"]:
        sys.stderr.write("ketch: interact() works once the container serves inputs\n")
        return
    if _state["stdin"] is None:
        session = Session()
        _state["stdin"] = session
        sys.stdin = session.reader
        builtins.input = _input_on(session)


def _input_on(session: Session) -> Any:
    """``input()`` on the session: its prompt shows on the user's terminal (stdout is the
    app's logs, which show whole lines)."""

    def terminal_input(prompt: object = "") -> str:
        session.writer.write(str(prompt))
        session.writer.flush()
        line = session.reader.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return terminal_input
