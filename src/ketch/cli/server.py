"""``ketch server start|stop|status``: manage the embedded control plane."""

from __future__ import annotations

import datetime

import click

from .. import _server_manager
from ._util import rpc


@click.group()
def server() -> None:
    """Manage the local control plane (state in KETCH_HOME, default ~/.ketch)."""


@server.command()
def start() -> None:
    """Start the control plane in the background (no-op if it runs)."""
    already = _server_manager.read_info()
    info = already or _server_manager.start()
    verb = "already running" if already else "started"
    click.echo(f"ketch control plane {verb} at {info.url} (pid {info.pid})")


@server.command()
def stop() -> None:
    """Stop the control plane and every container it runs."""
    info = _server_manager.stop()
    click.echo("ketch control plane stopped" if info else "ketch control plane is not running")


@server.command()
def status() -> None:
    """Show address, pid, version, uptime and runtime of the control plane."""
    info = _server_manager.read_info()
    if info is None and _server_manager.is_embedded():
        click.echo(f"ketch control plane is not running (home: {_server_manager.home()})")
        raise SystemExit(1)
    s = rpc("Status", {})
    uptime = datetime.timedelta(seconds=int(datetime.datetime.now().timestamp() - s["started_at"]))
    rows = [
        ("address", s["url"]),
        ("pid", s["pid"]),
        ("version", s["version"]),
        ("uptime", str(uptime)),
        ("home", str(_server_manager.home())),
        ("runtime", s["runtime"]),
        ("isolation", s["isolation"]),
        ("gpus", s.get("gpus", "")),
        ("running apps", s["n_apps"]),
        ("containers", s["n_containers"]),
    ]
    for key, value in rows:
        click.echo(f"{key:<13} {value}")
