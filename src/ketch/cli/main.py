"""The ``ketch`` command: the only place that configures logging."""

from __future__ import annotations

import logging

import click

from .. import __version__
from .._config import config
from .app_cmd import app_group
from .call_cmd import call_group
from .container_cmd import container_group
from .dashboard_cmd import dashboard
from .deploy import deploy
from .dict_cmd import dict_group
from .image_cmd import image_group
from .modal_alias import modal_alias_group
from .node_cmd import node_group
from .queue_cmd import queue_group
from .run import run
from .secret_cmd import secret_group
from .serve import serve
from .server import server
from .shell import shell
from .token_cmd import token_group
from .usage_cmd import usage
from .volume_cmd import volume_group


@click.group()
@click.version_option(__version__, prog_name="ketch")
def cli() -> None:
    """ketch: run Python functions in containers on your own machines."""
    logging.basicConfig(
        level=str(config.get("log_level")).upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )


cli.add_command(run)
cli.add_command(deploy)
cli.add_command(serve)
cli.add_command(shell)
cli.add_command(server)
cli.add_command(app_group)
cli.add_command(container_group)
cli.add_command(node_group)
cli.add_command(image_group)
cli.add_command(dict_group)
cli.add_command(queue_group)
cli.add_command(secret_group)
cli.add_command(volume_group)
cli.add_command(token_group)
cli.add_command(modal_alias_group)
cli.add_command(usage)
cli.add_command(call_group)
cli.add_command(dashboard)


def main(prog_name: str | None = None) -> None:
    from ..exception import Error

    try:
        code = cli(standalone_mode=False, prog_name=prog_name)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        raise SystemExit(1) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except Error as exc:
        # ketch's own errors are messages for the user, not crashes: no traceback.
        click.echo(f"Error: {type(exc).__name__}: {exc}", err=True)
        raise SystemExit(1) from None
    if isinstance(code, int) and code:  # ctx.exit(code) returns it when not standalone
        raise SystemExit(code)


if __name__ == "__main__":
    main()
