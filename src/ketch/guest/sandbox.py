"""The exec agent: the first process of a sandbox container.

It says hello on the container channel with the sandbox's channel token, then
runs each ``exec`` the control plane sends as a child process (its own
process group), streams the child's stdout and stderr back as they come, feeds
it the ``stdin`` pieces it is sent, and reports its exit code. A command that
cannot start exits 127 (not found) or 126 (not executable), with the reason on
its stderr, as a shell would. The main command (id ``main``), when there is
one, ends the sandbox: the agent exits with its code once it has reported it.

Messages (container channel, msgpack frames)::

    in:  {"t": "exec", "id", "argv", "workdir", "env"}  {"t": "stdin", "id", "data", "eof"}
         {"t": "kill", "id"}  {"t": "stop"}
    out: {"t": "out", "id", "fd": 1|2, "data"}  {"t": "exit", "id", "code"}
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import threading
from typing import Any

from .._wire import BlockingChannel, ChannelClosed
from .loop import _connect, _die_with_parent

CHUNK = 64 * 1024
FILE_CHUNK = 8 << 20  # the most one file read returns
MAIN = "main"
KILL_GRACE_S = 5.0


class Agent:
    def __init__(self, chan: BlockingChannel) -> None:
        self.chan = chan
        self.lock = threading.Lock()  # one writer at a time on the channel
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
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

    def start(self, exec_id: str, msg: dict[str, Any]) -> None:
        env = {**os.environ, **{str(k): str(v) for k, v in (msg.get("env") or {}).items()}}
        for private in ("KETCH_SANDBOX_TOKEN", "KETCH_CHANNEL", "KETCH_SANDBOX"):
            env.pop(private, None)
        try:
            proc = subprocess.Popen(
                [str(a) for a in msg["argv"]],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=msg.get("workdir") or None,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self.send({"t": "out", "id": exec_id, "fd": 2, "data": f"{exc}\n".encode()})
            self.exited(exec_id, code)
            return
        self.procs[exec_id] = proc
        for fd in (1, 2):  # before its pumps start, so that no pause is missed
            self.flowing[(exec_id, fd)] = threading.Event()
            self.flowing[(exec_id, fd)].set()
        readers = [
            threading.Thread(target=self.pump, args=(exec_id, proc.stdout, 1), daemon=True),
            threading.Thread(target=self.pump, args=(exec_id, proc.stderr, 2), daemon=True),
        ]
        for reader in readers:
            reader.start()
        threading.Thread(target=self.reap, args=(exec_id, proc, readers), daemon=True).start()

    def pump(self, exec_id: str, stream: Any, fd: int) -> None:
        flowing = self.flowing[(exec_id, fd)]
        try:
            while True:
                flowing.wait()  # paused: the command's writes block on its full pipe
                chunk = os.read(stream.fileno(), CHUNK)
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
        self.exited(exec_id, code if code >= 0 else 128 - code)

    def exited(self, exec_id: str, code: int) -> None:
        self.send({"t": "exit", "id": exec_id, "code": code})
        if exec_id == MAIN:
            self.stop()
            os._exit(code & 0xFF)

    def feed(self, exec_id: str, data: bytes, eof: bool) -> None:
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
    agent.run(list(init.get("execs") or []))
    os._exit(0)
