"""``ketch app list|stop|logs``."""

from __future__ import annotations

import click

from ..app import print_log_line
from ._util import ago, rpc


@click.group(name="app")
def app_group() -> None:
    """Manage running and deployed apps."""


@app_group.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Include stopped apps.")
def list_apps(show_all: bool) -> None:
    """List apps with their state and container counts."""
    apps = rpc("AppList", {})["apps"]
    if not show_all:
        apps = [a for a in apps if a["state"] != "stopped"]
    header = f"{'APP ID':<26} {'NAME':<24} {'STATE':<9} {'KIND':<9} {'FUNCTIONS':>9} {'CONTAINERS':>10}  CREATED"
    click.echo(header)
    for a in apps:
        kind = "deployed" if a["deployed"] else "ephemeral"
        click.echo(
            f"{a['app_id']:<26} {a['name'][:24]:<24} {a['state']:<9} {kind:<9} "
            f"{a['n_functions']:>9} {a['n_containers']:>10}  {ago(a['created_at'])}"
        )


@app_group.command()
@click.argument("name")
def stop(name: str) -> None:
    """Stop app NAME (a name or an ap- id): its containers stop, queued inputs are cancelled."""
    body = {"app_id": name} if name.startswith("ap-") else {"name": name}
    reply = rpc("AppStop", body)
    click.echo(f"stopped app {name} ({reply['app_id']})")


@app_group.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the app stops.")
def logs(name: str, follow: bool) -> None:
    """Print the container output of app NAME (a name or an ap- id)."""
    body = {"app_id": name} if name.startswith("ap-") else {"name": name}
    after = 0
    while True:
        reply = rpc("AppLogs", {**body, "after": after, "timeout": 30 if follow else 0, "limit": 5000})
        for row in reply["logs"]:
            after = row["seq"]
            print_log_line(row)
        if not reply["logs"] and (not follow or reply["state"] == "stopped"):
            return
