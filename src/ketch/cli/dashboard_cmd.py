"""``ketch dashboard``: a one-time link to the control plane's dashboard (server/dashboard.py)."""

from __future__ import annotations

import os
import webbrowser

import click

from ._util import rpc


@click.command()
@click.option("--no-browser", is_flag=True, help="Print the link only.")
def dashboard(no_browser: bool) -> None:
    """Print (and open in a browser, where there is one) a one-time link that logs this
    browser in to the dashboard for 12 hours. The link works once, within 2 minutes."""
    reply = rpc("DashboardLogin", {})
    if not reply.get("url"):
        raise click.ClickException("this control plane has no HTTP address for the dashboard")
    link = reply["url"].rstrip("/") + reply["path"]
    click.echo(f"dashboard: {link}")
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if not no_browser and has_display and not os.environ.get("CI"):
        webbrowser.open(link)
