"""``ketch image list|rm|prune``: the machine's image layer cache.

The cache lives in ``KETCH_IMAGE_CACHE`` (default ``~/.cache/ketch/images``)
and is shared by every ``KETCH_HOME`` on the machine, so these commands read
and change it directly, without a control plane.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import click

from .._config import config
from ..images.layers import LayerStore
from ..worker import rootless
from ._util import ago

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNIT_S = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _store(writing: bool = False) -> LayerStore:
    """The cache; to change it, an ordinary account first takes its control plane's
    user namespace (worker/rootless.py): layers hold files of its subordinate ids,
    which the account itself may not delete."""
    if writing and os.geteuid() != 0:
        rootless.enter()  # a short-lived CLI process, still single-threaded here
    return LayerStore(Path(config.get("image_cache")).expanduser())


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


@click.group(name="image")
def image_group() -> None:
    """Manage the image layer cache of this machine."""


@image_group.command(name="list")
def list_layers() -> None:
    """List cached layers: each is one build step on top of its parent."""
    infos = _store().infos()
    click.echo(f"{'LAYER':<14} {'PARENT':<14} {'SIZE':>9} {'CREATED':<10} {'USED':<10} STEP")
    for info in sorted(infos, key=lambda i: i.created):
        click.echo(
            f"{info.hash[:12]:<14} {(info.parent[:12] or '-'):<14} {_size(info.size):>9} "
            f"{ago(info.created):<10} {ago(info.last_used) if info.last_used else '-':<10} "
            f"{info.summary[:80]}"
        )
    total = sum(i.size for i in infos)
    click.echo(f"{len(infos)} layers, {_size(total)} in {_store().root}")


@image_group.command(name="rm")
@click.argument("layers", nargs=-1, required=True)
def remove(layers: tuple[str, ...]) -> None:
    """Remove LAYERS (hashes or unique prefixes) and every layer built on them."""
    store = _store(writing=True)
    for prefix in layers:
        full = store.resolve(prefix)
        if full is None:
            raise click.ClickException(f"no single cached layer starts with {prefix!r}")
        removed = store.remove(full)
        click.echo(f"removed {len(removed)} layer(s): {', '.join(h[:12] for h in removed)}")


@image_group.command()
@click.option(
    "--older-than",
    default="7d",
    show_default=True,
    help="Remove layers not used for this long (e.g. 12h, 7d, 0 for all).",
)
def prune(older_than: str) -> None:
    """Remove layers no image has used recently (and unfinished builds)."""
    m = _DURATION.match(older_than.strip())
    if not m:
        raise click.ClickException(
            f"--older-than takes a duration like 30m, 12h or 7d, not {older_than!r}"
        )
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    started = time.monotonic()
    removed = _store(writing=True).prune(seconds)
    click.echo(f"removed {len(removed)} layer(s) in {time.monotonic() - started:.1f}s")
