"""``ketch dict create|list|get|items|clear|delete``."""

from __future__ import annotations

import click

from .._dict import Dict
from ._util import ago, rpc


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


@click.group(name="dict")
def dict_group() -> None:
    """Manage named Dicts."""


@dict_group.command()
@click.argument("name")
def create(name: str) -> None:
    """Create an empty Dict called NAME."""
    rpc("ObjectCreate", {"kind": "dict", "name": name})
    click.echo(f"created Dict {name}")


@dict_group.command(name="list")
def list_dicts() -> None:
    """List named Dicts."""
    rows = rpc("ObjectList", {"kind": "dict"})["objects"]
    click.echo(f"{'NAME':<32} {'ID':<26} CREATED")
    for row in rows:
        click.echo(f"{row['name']:<32} {row['object_id']:<26} {ago(row['created_at'])}")


@dict_group.command()
@click.argument("name")
@click.argument("key")
def get(name: str, key: str) -> None:
    """Print the value of KEY (a string key) in Dict NAME."""
    value = Dict.from_name(name).get(key, default=KeyError)
    if value is KeyError:
        raise click.ClickException(f"Dict {name} has no key {key!r}")
    click.echo(_show(value))


@dict_group.command()
@click.argument("name")
@click.option(
    "-n", "limit", default=20, show_default=True, help="How many entries to show (0: all)."
)
def items(name: str, limit: int) -> None:
    """Print entries of Dict NAME."""
    d = Dict.from_name(name)
    total = d.len()
    for i, (key, value) in enumerate(d.items()):
        if limit and i >= limit:
            click.echo(f"... ({total - limit} more)")
            break
        click.echo(f"{_show(key)}: {_show(value)}")


@dict_group.command()
@click.argument("name")
def clear(name: str) -> None:
    """Remove every entry of Dict NAME."""
    Dict.from_name(name).clear()
    click.echo(f"cleared Dict {name}")


@dict_group.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete Dict NAME and its entries."""
    if not yes:
        click.confirm(f"Delete Dict {name} and all its entries?", abort=True)
    rpc("ObjectDelete", {"kind": "dict", "name": name})
    click.echo(f"deleted Dict {name}")
