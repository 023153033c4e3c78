"""The ``ketch`` command: the only place that configures logging."""

from __future__ import annotations

import logging
import os

import click

from .. import __version__
from .app_cmd import app_group
from .deploy import deploy
from .image_cmd import image_group
from .run import run
from .server import server


@click.group()
@click.version_option(__version__, prog_name="ketch")
def cli() -> None:
    """ketch: run Python functions in containers on your own machines."""
    logging.basicConfig(level=os.environ.get("KETCH_LOG_LEVEL", "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s")


cli.add_command(run)
cli.add_command(deploy)
cli.add_command(server)
cli.add_command(app_group)
cli.add_command(image_group)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
