"""``ketch server start|stop|status``: manage the embedded control plane."""

from __future__ import annotations

import datetime
import os

import click

from .. import _server_manager
from ._util import rpc


@click.group()
def server() -> None:
    """Manage the local control plane (state in KETCH_HOME, default ~/.ketch)."""


@server.command()
@click.option("--host", default=None, help="address of the API (default 127.0.0.1)")
@click.option(
    "--port", type=int, default=None, help="port of the API (default: the last one, or a free one)"
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TLS certificate (PEM)",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="its private key (PEM)",
)
@click.option(
    "--insecure", is_flag=True, help="off loopback without TLS: tokens travel in clear text"
)
@click.option(
    "--database",
    default=None,
    metavar="URL",
    help="postgresql://user@host:port/db: keep the state in PostgreSQL (default: SQLite in KETCH_HOME)",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="HOST:PORT of a Ray cluster: run containers on its nodes (pip install 'ketch[ray]')",
)
def start(
    host: str | None,
    port: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    database: str | None,
    ray_address: str | None,
) -> None:
    """Start the control plane in the background (no-op if it runs).

    Off loopback it needs TLS files (or --insecure), and every client a token:

        ketch server start --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
    """
    extra: list[str] = []
    for flag, value in (
        ("--host", host),
        ("--port", port),
        ("--tls-cert", tls_cert),
        ("--tls-key", tls_key),
    ):
        if value is not None:
            extra += [flag, str(value)]
    if insecure:
        extra.append("--insecure")
    if database is not None:  # the control plane reads it as KETCH_DATABASE
        os.environ["KETCH_DATABASE"] = database
    if ray_address is not None:  # read as KETCH_RAY
        os.environ["KETCH_RAY"] = ray_address
    already = _server_manager.read_info()
    info = already or _server_manager.start(extra_args=tuple(extra))
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
        ("state", s.get("state", "")),
        ("runtime", s["runtime"]),
        ("isolation", s["isolation"]),
        ("gpus", s.get("gpus", "")),
        ("running apps", s["n_apps"]),
        ("containers", s["n_containers"]),
    ]
    for key, value in rows:
        click.echo(f"{key:<13} {value}")
