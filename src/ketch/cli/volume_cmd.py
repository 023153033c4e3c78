"""``ketch volume create|list|ls|put|get|rm|cp|delete``."""

from __future__ import annotations

import contextlib
import os
import posixpath
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .._volume import FileEntryType, Volume
from ._util import ago, rpc

BAR_FROM_BYTES = 8 << 20  # transfers smaller than this get no progress bar


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    """A progress bar on stderr for large transfers (``None`` for small ones)."""
    if total < BAR_FROM_BYTES:
        yield None
        return
    started = time.monotonic()
    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_pos=False, show_percent=True
    ) as bar:
        yield bar.update
    elapsed = max(time.monotonic() - started, 1e-6)
    click.echo(f"{_size(total)} in {elapsed:.1f} s ({_size(total / elapsed)}/s)", err=True)


@click.group(name="volume")
def volume_group() -> None:
    """Manage Volumes: durable files that functions mount."""


@volume_group.command()
@click.argument("name")
def create(name: str) -> None:
    """Create an empty Volume called NAME."""
    rpc("ObjectCreate", {"kind": "volume", "name": name})
    click.echo(f"created Volume {name}")


@volume_group.command(name="list")
def list_volumes() -> None:
    """List named Volumes."""
    rows = rpc("ObjectList", {"kind": "volume"})["objects"]
    click.echo(f"{'NAME':<32} {'ID':<26} CREATED")
    for row in rows:
        click.echo(f"{row['name']:<32} {row['object_id']:<26} {ago(row['created_at'])}")


@volume_group.command()
@click.argument("name")
@click.argument("path", default="/")
@click.option("-r", "--recursive", is_flag=True, help="Everything under PATH.")
def ls(name: str, path: str, recursive: bool) -> None:
    """List files in Volume NAME under PATH."""
    entries = Volume.from_name(name).listdir(path, recursive=recursive)
    for e in entries:
        kind = {FileEntryType.DIRECTORY: "dir", FileEntryType.SYMLINK: "link"}.get(e.type, "file")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime))
        shown = e.path + ("/" if e.type == FileEntryType.DIRECTORY else "")
        click.echo(f"{kind:<5} {_size(e.size) if kind == 'file' else '-':>10}  {when}  {shown}")


@volume_group.command()
@click.argument("name")
@click.argument("local_path", type=click.Path(exists=True, path_type=Path))
@click.argument("remote_path", default="/")
@click.option("-f", "--force", is_flag=True, help="Overwrite files that exist.")
def put(name: str, local_path: Path, remote_path: str, force: bool) -> None:
    """Upload LOCAL_PATH (a file or directory) to REMOTE_PATH in Volume NAME.

    A REMOTE_PATH that ends with / (the default is /) means "into that directory".
    """
    vol = Volume.from_name(name)
    if remote_path.endswith("/"):
        remote_path = posixpath.join(remote_path, local_path.resolve().name)
    total = (
        sum(p.stat().st_size for p in local_path.rglob("*") if p.is_file())
        if local_path.is_dir()
        else (local_path.stat().st_size)
    )
    try:
        with _progress(total, f"uploading {local_path}") as update:
            with vol.batch_upload(force=force, _progress=update) as batch:
                if local_path.is_dir():
                    batch.put_directory(local_path, remote_path)
                else:
                    batch.put_file(local_path, remote_path)
    except FileExistsError as exc:
        raise click.ClickException(
            f"{str(exc).split(' (')[0]}: pass --force to overwrite"
        ) from None
    click.echo(f"uploaded {local_path} to {name}:/{remote_path.lstrip('/')}", err=True)


@volume_group.command()
@click.argument("name")
@click.argument("remote_path")
@click.argument("local_path", default=".")
@click.option("-f", "--force", is_flag=True, help="Overwrite local files that exist.")
def get(name: str, remote_path: str, local_path: str, force: bool) -> None:
    """Download REMOTE_PATH (a file or directory) from Volume NAME to LOCAL_PATH ('-' for stdout)."""
    vol = Volume.from_name(name)
    entries = vol.listdir(remote_path, recursive=True)
    base = remote_path.strip("/")
    single = len(entries) == 1 and entries[0].path == base and entries[0].type == FileEntryType.FILE
    if local_path == "-":
        if not single:
            raise click.UsageError("only a single file can be written to stdout")
        out = sys.stdout.buffer
        for chunk in vol.read_file(base):
            out.write(chunk)
        out.flush()
        return
    dest_root = Path(local_path)
    jobs: list[tuple[str, Path]] = []
    if single:
        target = dest_root / posixpath.basename(base) if dest_root.is_dir() else dest_root
        jobs.append((base, target))
    else:
        top = dest_root / posixpath.basename(base) if base else dest_root
        for e in entries:
            rel = e.path[len(base) :].lstrip("/") if base else e.path
            if e.type == FileEntryType.DIRECTORY:
                (top / rel).mkdir(parents=True, exist_ok=True)
            elif e.type == FileEntryType.FILE:
                jobs.append((e.path, top / rel))
    for _, target in jobs:
        if target.exists() and not force:
            raise click.ClickException(f"{target} exists (use --force to overwrite)")
    total = sum(e.size for e in entries if e.type == FileEntryType.FILE)
    with _progress(total, f"downloading {name}:/{base}") as update:
        for remote, target in jobs:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.ketch-part")
            with open(tmp, "wb") as fh:
                vol.read_file_into_fileobj(remote, fh, _progress=update)
            os.replace(tmp, target)
    click.echo(f"downloaded {len(jobs)} file(s) to {local_path}", err=True)


@volume_group.command()
@click.argument("name")
@click.argument("remote_path")
@click.option("-r", "--recursive", is_flag=True, help="Remove a directory and everything in it.")
def rm(name: str, remote_path: str, recursive: bool) -> None:
    """Remove REMOTE_PATH from Volume NAME."""
    Volume.from_name(name).remove_file(remote_path, recursive=recursive)
    click.echo(f"removed {name}:/{remote_path.lstrip('/')}")


@volume_group.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Copy directories.")
def cp(name: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Copy SRC... to DST inside Volume NAME (no data moves: contents are shared)."""
    if len(paths) < 2:
        raise click.UsageError("give at least one source and a destination")
    Volume.from_name(name).copy_files(list(paths[:-1]), paths[-1], recursive=recursive)
    click.echo(f"copied {', '.join(paths[:-1])} to {paths[-1]}")


@volume_group.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete Volume NAME and all its files."""
    if not yes:
        click.confirm(f"Delete Volume {name} and all its files?", abort=True)
    rpc("ObjectDelete", {"kind": "volume", "name": name})
    click.echo(f"deleted Volume {name}")
