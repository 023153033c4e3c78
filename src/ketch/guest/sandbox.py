"""The exec agent: the first process of a sandbox container.

A function's container runs it too, on its own channel (``ketch container exec
ct-...``): its guest loop hands it these messages.

It says hello on the container channel with the sandbox's channel token, then
runs each ``exec`` the control plane sends as a child process (its own
process group), streams the child's stdout and stderr back as they come, feeds
it the ``stdin`` pieces it is sent, and reports its exit code. A command that
cannot start exits 127 (not found) or 126 (not executable), with the reason on
its stderr, as a shell would. The main command (id ``main``), when there is
one, ends the sandbox: the agent exits with its code once it has reported it.

Messages (container channel, msgpack frames)::

    in:  {"t": "exec", "id", "argv", "workdir", "env", "pty"}  {"t": "stdin", "id", "data", "eof"}
         {"t": "kill", "id"}  {"t": "stop"}  {"t": "resize", "id", "rows", "cols"}
         {"t": "tunnel", "id", "port"}  {"t": "fs", "id", "op", "path", ...}
    out: {"t": "out", "id", "fd": 1|2, "data"}  {"t": "exit", "id", "code"}  {"t": "probe"}
         {"t": "attach", "id"} (an interactive session, ketch.guest.interact)

A command with ``pty`` (``{"rows", "cols"}``) runs on a new pseudo-terminal
as its controlling terminal: its output (stdout and stderr together) comes as
fd 1, stdin is typed into the terminal (``eof`` is Ctrl-D), and ``resize``
sets its window size. The ``init`` message may carry a readiness ``probe``
(``tcp_port`` or ``exec_argv``, every ``interval_ms``); the agent says
``probe`` once it has passed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import termios
import threading
import time
from typing import Any

from .._wire import BlockingChannel, ChannelClosed
from .loop import _connect, _die_with_parent
from .tunnel import open_connection

CHUNK = 64 * 1024
FILE_CHUNK = 8 << 20  # the most one file read returns
MAIN = "main"
KILL_GRACE_S = 5.0


class Agent:
    def __init__(self, chan: BlockingChannel, lock: threading.Lock | None = None) -> None:
        self.chan = chan
        self.lock = lock or threading.Lock()  # one writer at a time on the channel
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.terminals: dict[str, int] = {}  # a pty command's terminal (its master side)
        # Set while a stream may flow: the control plane pauses one whose output is unread.
        self.flowing: dict[tuple[str, int], threading.Event] = {}

    def send(self, msg: dict[str, Any]) -> None:
        with self.lock:
            self.chan.write(msg)

    def run(self, first: list[dict[str, Any]]) -> None:
        for msg in first:
            self.handle(msg)
        while True:
            try:
                msg = self.chan.read()
            except ChannelClosed:
                self.stop()
                return
            self.handle(msg)

    def handle(self, msg: dict[str, Any]) -> None:
        kind, exec_id = msg.get("t"), str(msg.get("id"))
        if kind == "exec":
            self.start(exec_id, msg)
        elif kind == "stdin":
            self.feed(exec_id, msg.get("data") or b"", bool(msg.get("eof")))
        elif kind == "kill":
            self.kill(exec_id)
        elif kind in ("pause", "resume"):
            event = self.flowing.get((exec_id, int(msg.get("fd") or 0)))
            if event is not None:
                (event.clear if kind == "pause" else event.set)()
        elif kind == "stop":
            self.stop()
        elif kind == "fs":
            self.send({"t": "fs", "id": exec_id, **_file_op(msg)})
        elif kind == "resize":
            if (terminal := self.terminals.get(exec_id)) is not None:
                _set_size(terminal, msg)
        elif kind == "tunnel":
            threading.Thread(target=open_connection, args=(msg, _connect), daemon=True).start()

    def start(self, exec_id: str, msg: dict[str, Any]) -> None:
        env = {**os.environ, **{str(k): str(v) for k, v in (msg.get("env") or {}).items()}}
        for private in ("KETCH_SANDBOX_TOKEN", "KETCH_CHANNEL", "KETCH_SANDBOX"):
            env.pop(private, None)
        pty = msg.get("pty")
        terminal = follower = -1
        if pty:
            env.setdefault("TERM", "xterm-256color")
            terminal, follower = os.openpty()
            _set_size(terminal, pty if isinstance(pty, dict) else {})
        try:
            proc = subprocess.Popen(
                [str(a) for a in msg["argv"]],
                stdin=follower if pty else subprocess.PIPE,
                stdout=follower if pty else subprocess.PIPE,
                stderr=follower if pty else subprocess.PIPE,
                cwd=msg.get("workdir") or None,
                env=env,
                start_new_session=True,
                preexec_fn=_take_terminal if pty else None,  # noqa: PLW1509
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self.send({"t": "out", "id": exec_id, "fd": 2, "data": f"{exc}\n".encode()})
            self.exited(exec_id, code)
            if pty:
                os.close(terminal)
                os.close(follower)
            return
        self.procs[exec_id] = proc
        streams: list[tuple[Any, int]] = [(proc.stdout, 1), (proc.stderr, 2)]
        if pty:
            os.close(follower)  # the command holds it; the terminal reads EOF (EIO) when it exits
            self.terminals[exec_id] = terminal
            streams = [(terminal, 1)]
        for _, fd in streams:  # before its pumps start, so that no pause is missed
            self.flowing[(exec_id, fd)] = threading.Event()
            self.flowing[(exec_id, fd)].set()
        readers = [
            threading.Thread(target=self.pump, args=(exec_id, stream, fd), daemon=True)
            for stream, fd in streams
        ]
        for reader in readers:
            reader.start()
        threading.Thread(target=self.reap, args=(exec_id, proc, readers), daemon=True).start()

    def adopt(self, exec_id: str, terminal: int) -> None:
        """Stream a terminal made in this process (an interactive session,
        :mod:`ketch.guest.interact`) as command ``exec_id``: it ends when its other side
        is closed."""
        self.send({"t": "attach", "id": exec_id})
        self.terminals[exec_id] = terminal
        self.flowing[(exec_id, 1)] = threading.Event()
        self.flowing[(exec_id, 1)].set()

        def run() -> None:
            self.pump(exec_id, terminal, 1)
            self.terminals.pop(exec_id, None)
            os.close(terminal)
            self.send({"t": "exit", "id": exec_id, "code": 0})

        threading.Thread(target=run, daemon=True).start()

    def pump(self, exec_id: str, stream: Any, fd: int) -> None:
        flowing = self.flowing[(exec_id, fd)]
        try:
            while True:
                flowing.wait()  # paused: the command's writes block on its full pipe
                try:
                    chunk = os.read(stream if isinstance(stream, int) else stream.fileno(), CHUNK)
                except OSError:  # a terminal whose command (and its children) closed it
                    chunk = b""
                if not chunk:
                    return
                self.send({"t": "out", "id": exec_id, "fd": fd, "data": chunk})
        finally:
            self.flowing.pop((exec_id, fd), None)

    def reap(
        self, exec_id: str, proc: subprocess.Popen[bytes], readers: list[threading.Thread]
    ) -> None:
        code = proc.wait()
        for reader in readers:  # all of its output first, then its exit
            reader.join()
        self.procs.pop(exec_id, None)
        if (terminal := self.terminals.pop(exec_id, None)) is not None:
            os.close(terminal)
        self.exited(exec_id, code if code >= 0 else 128 - code)

    def exited(self, exec_id: str, code: int) -> None:
        self.send({"t": "exit", "id": exec_id, "code": code})
        if exec_id == MAIN:
            self.stop()
            os._exit(code & 0xFF)

    def feed(self, exec_id: str, data: bytes, eof: bool) -> None:
        if (terminal := self.terminals.get(exec_id)) is not None:
            with contextlib.suppress(OSError):  # typed, as at a keyboard; EOF is Ctrl-D
                os.write(terminal, data + (b"\x04" if eof else b""))
            return
        proc = self.procs.get(exec_id)
        if proc is None or proc.stdin is None:
            return
        try:
            if data:
                proc.stdin.write(data)
                proc.stdin.flush()
            if eof:
                proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass  # it closed its stdin or exited: what it did not read is dropped

    def kill(self, exec_id: str) -> None:
        proc = self.procs.get(exec_id)
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)
        for fd in (1, 2):  # a paused stream drains, so that its exit is reported
            if (event := self.flowing.get((exec_id, fd))) is not None:
                event.set()

    def stop(self) -> None:
        """Every command gets SIGTERM, then SIGKILL after a grace period."""
        procs = list(self.procs.values())
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        for event in list(self.flowing.values()):
            event.set()
        for proc in procs:
            try:
                proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)


def _read(path: str, msg: dict[str, Any]) -> Any:
    with open(path, "rb") as fh:
        fh.seek(int(msg.get("offset") or 0))
        data = fh.read(int(msg.get("length") or FILE_CHUNK))
        return {"data": data, "size": os.fstat(fh.fileno()).st_size}


def _write(path: str, msg: dict[str, Any]) -> Any:
    with open(path, "ab" if msg.get("append") else "wb") as fh:
        fh.write(msg.get("data") or b"")


def _stat(path: str, msg: dict[str, Any]) -> Any:
    st = os.lstat(path)
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    return {
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
        "type": kind,
    }


def _mkdir(path: str, msg: dict[str, Any]) -> Any:
    if msg.get("parents"):
        os.makedirs(path, exist_ok=True)
    else:
        os.mkdir(path)


def _rm(path: str, msg: dict[str, Any]) -> Any:
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
    elif msg.get("recursive"):
        shutil.rmtree(path)
    else:
        os.rmdir(path)


_FILE_OPS = {
    "read": _read,
    "write": _write,
    "ls": lambda path, msg: sorted(os.listdir(path)),
    "stat": _stat,
    "mkdir": _mkdir,
    "rm": _rm,
}


def _file_op(msg: dict[str, Any]) -> dict[str, Any]:
    """One file operation, as root of the sandbox; ``{"ok": ...}`` or ``{"error": [type, text]}``."""
    path, op = str(msg.get("path") or ""), msg.get("op")
    try:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path")
        if op not in _FILE_OPS:
            raise ValueError(f"unknown file operation {op!r}")
        return {"ok": _FILE_OPS[str(op)](path, msg)}
    except OSError as exc:
        kind = "DirectoryNotEmpty" if exc.errno == errno.ENOTEMPTY else type(exc).__name__
        return {"error": [kind, f"{exc.strerror or exc}: {path}"]}
    except ValueError as exc:
        return {"error": ["ValueError", str(exc)]}


def _take_terminal() -> None:
    """In the child, after setsid: its stdin (a pty) becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(terminal: int, size: dict[str, Any]) -> None:
    rows, cols = int(size.get("rows") or 24), int(size.get("cols") or 80)
    with contextlib.suppress(OSError):
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _probe(agent: Agent, probe: dict[str, Any]) -> None:
    """Run the readiness probe until it passes, then tell the control plane (once)."""
    interval = max(int(probe.get("interval_ms") or 100), 10) / 1000
    argv = [str(a) for a in probe.get("exec_argv") or []]
    port = int(probe.get("tcp_port") or 0)
    while True:
        try:
            if argv:
                env = {k: v for k, v in os.environ.items() if not k.startswith("KETCH_SANDBOX")}
                env.pop("KETCH_CHANNEL", None)
                done = subprocess.run(argv, capture_output=True, timeout=60, env=env)
                passed = done.returncode == 0
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    passed = True
        except (OSError, subprocess.SubprocessError):
            passed = False
        if passed:
            agent.send({"t": "probe"})
            return
        time.sleep(interval)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> None:
    _die_with_parent()
    if os.environ.get("KETCH_RUNTIME") == "sandbox":
        from .landlock import confine_container

        confine_container()
    chan = _connect()
    chan.write(
        {
            "t": "hello",
            "container_id": os.environ["KETCH_CONTAINER_ID"],
            "token": os.environ.get("KETCH_SANDBOX_TOKEN", ""),
        }
    )
    init = chan.read()
    agent = Agent(chan)

    def on_term(*_: Any) -> None:
        agent.stop()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    if init.get("probe"):
        threading.Thread(target=_probe, args=(agent, init["probe"]), daemon=True).start()
    agent.run(list(init.get("execs") or []))
    os._exit(0)
