"""Find, start and stop the embedded control plane that lives under ``KETCH_HOME``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ._config import config
from .exception import ConnectionFailedError


@dataclass(frozen=True)
class ServerInfo:
    url: str
    pid: int | None = None
    version: str | None = None
    started_at: float | None = None
    socket: str | None = None  # the API's unix socket, for clients on the same machine


def home() -> Path:
    return config.home()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_info() -> ServerInfo | None:
    """The embedded server's address, or None when it is not running."""
    path = home() / "server.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not _alive(int(data["pid"])):
        return None
    return ServerInfo(
        data["url"],
        int(data["pid"]),
        data.get("version"),
        data.get("started_at"),
        data.get("socket"),
    )


def start(timeout: float = 30.0, extra_args: tuple[str, ...] = ()) -> ServerInfo:
    """Start the embedded server in the background (or return the running one).

    ``extra_args`` go to ``python -m ketch.server`` (``--host``, ``--port``, TLS files).
    """
    h = home()
    h.mkdir(parents=True, exist_ok=True)
    with (h / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_info()
        if info is not None:
            return info
        with contextlib.suppress(FileNotFoundError):
            (h / "server.json").unlink()
        with (h / "server.log").open("ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                # -P and cwd=home: the user's folder (a secrets.py in it, say) must not shadow
                # the standard library for the control plane.
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "ketch.server",
                    "--home",
                    str(h.resolve()),
                    *extra_args,
                ],
                cwd=str(h.resolve()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = read_info()
            if info is not None and info.pid == proc.pid:
                # Reaped when it exits, so that a server that died is no zombie that looks
                # alive (``_alive``) to this process; and the Popen never warns at exit.
                threading.Thread(target=proc.wait, name="ketch-reaper", daemon=True).start()
                return info
            if proc.poll() is not None:
                said = _last_words(h / "server.log")
                raise ConnectionFailedError(
                    f"the ketch control plane exited at start (code {proc.returncode})"
                    + (f": {said}" if said else "")
                    + f"; see {h / 'server.log'}"
                )
            time.sleep(0.02)
        proc.kill()
        raise ConnectionFailedError(
            f"the ketch control plane did not start within {timeout:g} s; see {h / 'server.log'}"
        )


def _last_words(log: Path) -> str:
    """What a control plane that refused to start said last (its ``ketch: ...`` line)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    said = [line for line in lines if line.startswith("ketch: ")]
    return said[-1].removeprefix("ketch: ") if said else ""


def stop(timeout: float = 10.0) -> ServerInfo | None:
    """Stop the embedded server; returns what was stopped, or None if nothing ran.

    A start in progress holds the lock until its server is ready, so a stop
    that races a start waits for it and then stops it.
    """
    h = home()
    if not h.is_dir():
        return None
    with (h / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_info()
    if info is None or info.pid is None:
        return None
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(info.pid):
            return info
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGKILL)
    return info


def ensure() -> ServerInfo:
    """The server to talk to: ``KETCH_SERVER_URL`` if set, else the embedded one (started if needed)."""
    url = config.get("server_url")
    if url:
        return ServerInfo(url.rstrip("/"))
    return read_info() or start()


def token() -> str:
    """The token this process sends: its container's, ``KETCH_TOKEN``, or the owner's file.

    The owner's token is ``KETCH_HOME/token``, written by the control plane's first start.
    """
    found = os.environ.get("KETCH_CONTAINER_TOKEN") or config.get("token")
    if found:
        return str(found)
    try:
        return (home() / "token").read_text().strip()
    except OSError:
        return ""


def is_embedded() -> bool:
    return not config.get("server_url")
