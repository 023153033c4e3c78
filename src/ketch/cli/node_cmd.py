"""``ketch node list``: the nodes that run containers, with what they have and hold."""

from __future__ import annotations

import json

import click

from ._util import rpc


@click.group(name="node")
def node_group() -> None:
    """Look at the nodes that run containers."""


@node_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
def list_nodes(as_json: bool) -> None:
    """Each node: CPUs, memory, GPUs (type, which container holds each), containers, health."""
    nodes = rpc("NodeList", {})["nodes"]
    if as_json:
        click.echo(json.dumps(nodes, indent=1))
        return
    click.echo(
        f"{'NODE':<12} {'HOST':<20} {'CPUS':>4} {'MEMORY (FREE)':>17} {'GPUS (IN USE)':<20} "
        f"{'CONTAINERS':>10} {'SANDBOXES':>9} {'RUNTIME':<13} HEALTH"
    )
    for n in nodes:
        memory = f"{n['memory_mib'] / 1024:.1f} ({n['memory_available_mib'] / 1024:.1f}) GiB"
        kinds: dict[str, list[int]] = {}
        for g in n["gpus"]:
            have = kinds.setdefault(g["type"], [0, 0])
            have[0] += 1
            have[1] += 1 if g["container"] else 0
        gpus = ", ".join(f"{k} x{c} ({u})" for k, (c, u) in kinds.items()) or "-"
        click.echo(
            f"{n['node_id'][:12]:<12} {n['hostname'][:20]:<20} {n['cpus']:>4g} {memory:>17} {gpus:<20} "
            f"{n['containers']:>10} {n['sandboxes']:>9} {n['runtime']:<13} {n['health']}"
        )
        for g in n["gpus"]:
            holder = g["container"] or "free"
            click.echo(f"  gpu {g['index']}: {g['name']} ({g['memory_mib']} MiB) {holder}")
