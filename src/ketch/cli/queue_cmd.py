"""``ketch queue create|list|peek|len|clear|delete``."""

from __future__ import annotations

import click

from .._queue import Queue
from ._util import ago, rpc


@click.group(name="queue")
def queue_group() -> None:
    """Manage named Queues."""


@queue_group.command()
@click.argument("name")
def create(name: str) -> None:
    """Create an empty Queue called NAME."""
    rpc("ObjectCreate", {"kind": "queue", "name": name})
    click.echo(f"created Queue {name}")


@queue_group.command(name="list")
def list_queues() -> None:
    """List named Queues with their total length."""
    rows = rpc("ObjectList", {"kind": "queue"})["objects"]
    click.echo(f"{'NAME':<32} {'ID':<26} {'ITEMS':>7}  CREATED")
    for row in rows:
        n = Queue.from_name(row["name"]).len(total=True)
        click.echo(f"{row['name']:<32} {row['object_id']:<26} {n:>7}  {ago(row['created_at'])}")


@queue_group.command()
@click.argument("name")
@click.option("-n", "count", default=10, show_default=True, help="How many items to show.")
@click.option("--partition", default=None, help="A partition (default: the default partition).")
def peek(name: str, count: int, partition: str | None) -> None:
    """Print the next items of Queue NAME without removing them."""
    for i, item in enumerate(Queue.from_name(name).iterate(partition=partition)):
        if i >= count:
            break
        text = repr(item)
        click.echo(text if len(text) <= 200 else text[:197] + "...")


@queue_group.command(name="len")
@click.argument("name")
@click.option("--partition", default=None, help="Count one partition.")
@click.option("--total", is_flag=True, help="Count every partition.")
def length(name: str, partition: str | None, total: bool) -> None:
    """Print how many items Queue NAME holds."""
    click.echo(Queue.from_name(name).len(partition=partition, total=total))


@queue_group.command()
@click.argument("name")
@click.option("--partition", default=None, help="Clear one partition.")
@click.option("--all", "everything", is_flag=True, help="Clear every partition.")
def clear(name: str, partition: str | None, everything: bool) -> None:
    """Remove the items of Queue NAME."""
    Queue.from_name(name).clear(partition=partition, all=everything)
    click.echo(f"cleared Queue {name}")


@queue_group.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete Queue NAME and its items."""
    if not yes:
        click.confirm(f"Delete Queue {name} and all its items?", abort=True)
    rpc("ObjectDelete", {"kind": "queue", "name": name})
    click.echo(f"deleted Queue {name}")
