"""``ketch secret create|list|delete``: values go in, and are never shown again."""

from __future__ import annotations

from pathlib import Path

import click

from .._secret import check_env, parse_dotenv
from ._util import ago, rpc


@click.group(name="secret")
def secret_group() -> None:
    """Manage named Secrets (environment variables for containers, stored encrypted)."""


@secret_group.command()
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@click.option(
    "--from-dotenv",
    "dotenv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also read KEY=VALUE lines from this .env file (pairs given as arguments win).",
)
@click.option("--force", is_flag=True, help="Replace the values of an existing Secret.")
def create(name: str, pairs: tuple[str, ...], dotenv: Path | None, force: bool) -> None:
    """Create Secret NAME with the variables KEY=VALUE ...

    Example: ketch secret create openai OPENAI_API_KEY=sk-... ORG=acme
    """
    env: dict[str, str] = {}
    if dotenv is not None:
        try:
            env.update(parse_dotenv(dotenv.read_text(encoding="utf-8"), str(dotenv)))
        except OSError as exc:
            raise click.UsageError(f"cannot read {dotenv}: {exc.strerror}") from None
    for position, pair in enumerate(pairs, start=2):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            # The argument is not echoed: it may be a value.
            raise click.UsageError(f"argument {position} is not KEY=VALUE")
        env[key] = value
    if not env:
        raise click.UsageError("give at least one KEY=VALUE (or --from-dotenv FILE)")
    check_env(env, f"Secret {name!r}")
    reply = rpc("SecretCreate", {"name": name, "env": env, "force": force})
    verb = "created" if reply["created"] else "replaced the values of"
    click.echo(f"{verb} Secret {name} with key(s) {', '.join(sorted(env))}")


@secret_group.command(name="list")
def list_secrets() -> None:
    """List named Secrets (names only: values are never shown)."""
    rows = rpc("ObjectList", {"kind": "secret"})["objects"]
    click.echo(f"{'NAME':<40} CREATED")
    for row in rows:
        click.echo(f"{row['name']:<40} {ago(row['created_at'])}")


@secret_group.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete Secret NAME. Functions that use it cannot start new containers afterwards."""
    if not yes:
        click.confirm(f"Delete Secret {name}?", abort=True)
    rpc("ObjectDelete", {"kind": "secret", "name": name})
    click.echo(f"deleted Secret {name}")
