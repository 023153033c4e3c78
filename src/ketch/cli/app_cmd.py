"""``ketch app list|stop|logs|history|rollback``."""

from __future__ import annotations

import time

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


@app_group.command()
@click.argument("name")
def history(name: str) -> None:
    """List the versions of deployed app NAME: when, and a short hash of its source."""
    reply = rpc("AppHistory", {"name": name})
    click.echo(f"{'VERSION':>7}  {'DEPLOYED':<22} {'SOURCE':<8}  {'FUNCTIONS':>9}  NOTE")
    for v in reversed(reply["versions"]):
        live = "  (live)" if v["version"] == reply["live"] else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_at"]))
        click.echo(f"{'v' + str(v['version']):>7}  {when:<22} {v['source_hash']:<8}  {v['n_functions']:>9}  {v['note']}{live}")


@app_group.command()
@click.argument("name")
@click.argument("version", required=False)
def rollback(name: str, version: str | None) -> None:
    """Make an earlier VERSION of deployed app NAME live again (default: the one before the live one).

    Running calls finish on the current containers; new calls go to the earlier version's.
    Example: ketch app rollback my-app v3
    """
    body: dict[str, object] = {"name": name}
    if version is not None:
        number = version.lower().removeprefix("v")
        if not number.isdigit():
            raise click.UsageError(f"VERSION is a number like 3 or v3, not {version!r}")
        body["version"] = int(number)
    reply = rpc("AppRollback", body)
    click.echo(f"rolled app {name!r} back to v{reply['rolled_back_to']} (now v{reply['version']})")
    for endpoint, url in sorted(reply.get("web_urls", {}).items()):
        click.echo(f"  - {endpoint} => {url}")
