"""``ketch usage``: what containers cost, from the control plane's meter (server/usage.py)."""

from __future__ import annotations

import json
from typing import Any

import click

from ._util import parse_when, rpc

_COLUMNS = {
    "day": ["day"],
    "app": ["app"],
    "function": ["app", "tag"],
    "container": ["app", "tag", "container_id"],
}


@click.command()
@click.option("--app", "app", help="Only this app (a name or an ap- id).")
@click.option("--function", "function", help="Only this function or class.")
@click.option("--since", help="From this long ago (1d, 12h) or this date (ISO), by whole UTC days.")
@click.option(
    "--by",
    type=click.Choice(["day", "app", "function", "container"]),
    default="app",
    show_default=True,
    help="How to group the rows.",
)
@click.option("--call", "call_id", help="One call's share instead (fc-...).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def usage(
    app: str | None,
    function: str | None,
    since: str | None,
    by: str,
    call_id: str | None,
    as_json: bool,
) -> None:
    """Cost, CPU, memory and GPU seconds of containers, metered at 100 ms granularity."""
    body: dict[str, Any] = {"by": by}
    if call_id:
        body = {"call_id": call_id}
    for key, value in (("app", app), ("function", function)):
        if value:
            body[key] = value
    if since:
        body["since"] = parse_when(since)
    reply = rpc("UsageReport", body)
    if as_json:
        click.echo(json.dumps(reply, indent=1, sort_keys=True))
        return
    if call_id:
        call = reply["call"]
        if call is None:
            raise click.ClickException(f"no usage recorded for {call_id} (yet)")
        click.echo(f"{call_id}: {call['seconds']:.1f} s of container time, ${call['cost']:.6f}")
        return
    keys = _COLUMNS[by]
    header = [*keys, "seconds", "cpu core-s", "mem GiB-s", "gpu-s", "cost $"]
    rows = [
        [
            *(str(r.get(k) or "") for k in keys),
            f"{r['seconds']:.1f}",
            f"{r['cpu_s']:.1f}",
            f"{r['mem_gib_s']:.1f}",
            f"{r['gpu_s']:.1f}",
            f"{r['cost']:.6f}",
        ]
        for r in reply["rows"]
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    total = sum(r["cost"] for r in reply["rows"])
    click.echo(
        f"total ${total:.6f} (rates: {json.dumps(reply['rates']['cpu_core'])} $/core-s, "
        f"{json.dumps(reply['rates']['memory_gib'])} $/GiB-s; `ketch usage --json` has all)"
    )
