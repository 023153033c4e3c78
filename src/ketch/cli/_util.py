"""Helpers shared by CLI commands: importing the user's file and calling the API."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from .. import _modal_alias, _sync
from .._client import _Client
from ..app import App


def rpc(method: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        client = await _Client.get()
        return await client.rpc(method, body, timeout=timeout)

    return _sync.run_sync(call())


def import_file(path_str: str) -> Any:
    """Import the user's app file as a module named after it, as containers will; its
    ``import modal`` is ketch (``ketch._modal_alias``)."""
    _modal_alias.install()
    path = Path(path_str).resolve()
    if not path.is_file():
        raise click.UsageError(f"no such file: {path_str}")
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.UsageError(f"cannot import {path_str}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def web_urls(fn: Any) -> list[tuple[str, str]]:
    """A registered function's web endpoints and their URLs, sorted (once its app runs)."""
    return sorted(getattr(fn, "_ketch_impl", fn)._web_urls.items())


def print_web_urls(app: Any) -> int:
    """``web endpoint NAME => URL`` on stderr for each endpoint of a running app; how many."""
    n = 0
    for fn in app.registered_functions.values():
        for endpoint, url in web_urls(fn):
            click.echo(f"web endpoint {endpoint} => {url}", err=True)
            n += 1
    return n


def find_apps(module: Any) -> list[Any]:
    return [v for v in vars(module).values() if isinstance(v, App)]


def find_app(module: Any, path: str) -> Any:
    apps = find_apps(module)
    if not apps:
        raise click.UsageError(f"{path} defines no ketch.App")
    if len(apps) > 1 and "app" in vars(module) and isinstance(module.app, App):
        return module.app
    if len(apps) > 1:
        raise click.UsageError(
            f"{path} defines several apps; name the one to use as FILE::app_variable"
        )
    return apps[0]


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    secs = time.time() - ts
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit} ago"
    return f"{secs:.0f}s ago"


class WholeLines:
    """A text stream that writes each thread's output a whole line at a time.

    ``ketch run`` puts one over stdout and stderr, so container log lines
    (printed by the follower thread) never split a line the entrypoint is
    printing: ``print(a, b)`` makes several writes.
    """

    _lock = threading.Lock()  # shared by stdout and stderr: one terminal

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._partial = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self._partial, "text", "") + text
        head, sep, tail = pending.rpartition("\n")
        self._partial.text = tail
        if sep:
            with self._lock:
                self._stream.write(head + sep)
        return len(text)

    def flush(self) -> None:
        pending = getattr(self._partial, "text", "")
        self._partial.text = ""
        with self._lock:
            if pending:
                self._stream.write(pending)
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_when(text: str) -> float:
    """A Unix time from ``10m``/``2h``/``1d``/``30s`` ago, or an ISO date and time (UTC when
    it names no zone)."""
    import datetime
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give a duration ago (30s, 10m, 2h, 1d) or a time (2026-12-06T09:30)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()
