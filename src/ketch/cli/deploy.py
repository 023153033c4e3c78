"""``ketch deploy FILE``: make a named, persistent app."""

from __future__ import annotations

import click

from ._util import find_app, import_file, web_urls


@click.command()
@click.argument("path")
@click.option("--name", default=None, help="Deploy under this name instead of the App's own.")
def deploy(path: str, name: str | None) -> None:
    """Deploy FILE's app; its functions stay callable by name until `ketch app stop`.

    Example: ketch deploy app.py   then   ketch.Function.from_name("my-app", "square")
    """
    module = import_file(path)
    app = find_app(module, path)
    app.deploy(name=name)
    app_name = name or app.name
    version = getattr(app, "_ketch_impl", app)._version
    click.echo(f"Deployed app {app_name!r} ({app.app_id}) as v{version}")
    for tag, fn in app.registered_functions.items():
        urls = web_urls(fn)
        if not urls:
            click.echo(f"  - {tag}")
        for endpoint, url in urls:
            click.echo(f"  - {endpoint} => {url}")
