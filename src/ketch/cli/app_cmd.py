"""``ketch app list|stop|logs|history|rollback``."""

from __future__ import annotations

import time
from typing import Any

import click

from ..app import print_log_line
from ._util import ago, parse_when, rpc


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
    header = (
        f"{'APP ID':<26} {'NAME':<24} {'STATE':<9} {'KIND':<9} {'FUNCTIONS':>9} {'CONTAINERS':>10}  "
        f"{'CREATED':<14} NEXT RUN"
    )
    click.echo(header)
    for a in apps:
        kind = "deployed" if a["deployed"] else "ephemeral"
        click.echo(
            f"{a['app_id']:<26} {a['name'][:24]:<24} {a['state']:<9} {kind:<9} "
            f"{a['n_functions']:>9} {a['n_containers']:>10}  {ago(a['created_at']):<14} {_when(a.get('next_run'))}"
        )


def _when(ts: float | None) -> str:
    """A future time as a clock time and how far off it is ('-' for none)."""
    if ts is None:
        return "-"
    left = max(0.0, ts - time.time())
    off = (
        f"{left:.0f}s"
        if left < 120
        else f"{left / 60:.0f}m"
        if left < 7200
        else f"{left / 3600:.1f}h"
    )
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} (in {off})"


def _schedule_text(wire: dict[str, Any]) -> str:
    if wire["type"] == "cron":
        return f"Cron({wire['cron']!r}, timezone={wire['timezone']!r})"
    parts = [f"months={wire['months']}"] if wire.get("months") else []
    if wire.get("seconds"):
        parts.append(f"seconds={wire['seconds']:g}")
    return f"Period({', '.join(parts)})"


@app_group.command()
@click.argument("name")
def info(name: str) -> None:
    """Show app NAME: its functions, web endpoints, schedules (next and last run) and version."""
    body = {"app_id": name} if name.startswith("ap-") else {"name": name}
    reply = rpc("AppInfo", body)
    kind = "deployed" if reply["deployed"] else "ephemeral"
    version = f", v{reply['version']}" if reply.get("version") else ""
    click.echo(
        f"{reply['name']} ({reply['app_id']}): {reply['state']}, {kind}{version}, "
        f"{reply['n_containers']} container(s), created {ago(reply['created_at'])}"
    )
    budget = reply.get("budget_per_day")
    click.echo(
        f"cost today (UTC): ${reply.get('cost_today', 0.0):.6f}"
        + (f" of a ${budget:.2f}/day budget" if budget is not None else "")
    )
    click.echo("functions:")
    for fn in reply["functions"]:
        click.echo(f"  - {fn['tag']}")
    for endpoint, url in sorted(reply["web_urls"].items()):
        click.echo(f"web endpoint {endpoint} => {url}")
    for sched in reply["schedules"]:
        click.echo(f"schedule {sched['tag']}: {_schedule_text(sched['schedule'])}")
        nxt = _when(sched["next_at"]) if reply["state"] == "running" else "- (the app is stopped)"
        click.echo(f"  next run: {nxt}")
        last = sched.get("last")
        if last:
            click.echo(f"  last run: {last['call_id']} {ago(last['at'])}, {last['status']}")
    for c in reply.get("containers", []):
        how = f", started {c['start']}" if c.get("start") else ""
        click.echo(f"container {c['container_id']} ({c['function']}): {c['state']}{how}")
    for sb in reply.get("sandboxes", []):
        label = f" {sb['name']!r}" if sb.get("name") else ""
        tags = " ".join(f"{k}={v}" for k, v in sorted(sb["tags"].items()))
        click.echo(
            f"sandbox {sb['sandbox_id']}{label}: created {ago(sb['created_at'])} {tags}".rstrip()
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
@click.option("--since", help="From this long ago (30s, 10m, 2h, 1d) or this time (ISO, UTC).")
@click.option("--until", help="Up to this long ago, or this time.")
@click.option("--search", help="Only lines containing this text (case-insensitive).")
@click.option("--function", "function", help="Only this function's or class's output.")
@click.option("--call", "call_id", help="Only this call's output (fc-...).")
@click.option("--container", "container_id", help="Only this container's output (ta-...).")
def logs(
    name: str,
    follow: bool,
    since: str | None,
    until: str | None,
    search: str | None,
    function: str | None,
    call_id: str | None,
    container_id: str | None,
) -> None:
    """Print the container output of app NAME (a name or an ap- id).

    A line belongs to a call when its container ran only that call's input as it printed
    (a container running several inputs at once prints lines that --call leaves out).
    """
    body: dict[str, Any] = {"app_id": name} if name.startswith("ap-") else {"name": name}
    filters = {
        "since": parse_when(since) if since else None,
        "until": parse_when(until) if until else None,
        "search": search,
        "function": function,
        "call_id": call_id,
        "container_id": container_id,
    }
    body.update({k: v for k, v in filters.items() if v is not None})
    after = 0
    while True:
        reply = rpc(
            "AppLogs", {**body, "after": after, "timeout": 30 if follow else 0, "limit": 5000}
        )
        for row in reply["logs"]:
            print_log_line(row)
        moved = reply.get("cursor", reply["logs"][-1]["seq"] if reply["logs"] else after)
        if moved == after and (not follow or reply["state"] == "stopped"):
            return
        after = moved


@app_group.command()
@click.argument("name")
def history(name: str) -> None:
    """List the versions of deployed app NAME: when, and a short hash of its source."""
    reply = rpc("AppHistory", {"name": name})
    click.echo(f"{'VERSION':>7}  {'DEPLOYED':<22} {'SOURCE':<8}  {'FUNCTIONS':>9}  NOTE")
    for v in reversed(reply["versions"]):
        live = "  (live)" if v["version"] == reply["live"] else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_at"]))
        click.echo(
            f"{'v' + str(v['version']):>7}  {when:<22} {v['source_hash']:<8}  {v['n_functions']:>9}  {v['note']}{live}"
        )


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


@app_group.command()
@click.argument("name")
@click.argument("amount", required=False)
@click.option("--clear", is_flag=True, help="Remove the app's budget.")
def budget(name: str, amount: str | None, clear: bool) -> None:
    """Give app NAME a budget of AMOUNT dollars a day ("5", "$5/day"); past it, no new
    containers start that day (UTC) and the inputs waiting for one fail saying so."""
    if clear == (amount is not None):
        raise click.UsageError("give an AMOUNT (like 5/day) or --clear")
    usd = None
    if amount is not None:
        text = amount.strip().removeprefix("$").removesuffix("/day").removesuffix("/d")
        try:
            usd = float(text)
        except ValueError:
            raise click.BadParameter(f"{amount!r}: dollars a day, like 5 or $5/day") from None
    rpc("AppBudgetSet", {"name": name, "usd_per_day": usd})
    click.echo(f"app {name}: " + ("no budget" if usd is None else f"budget ${usd:.2f}/day"))
