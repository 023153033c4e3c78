"""``ketch container list|logs|stop``: one container at a time."""

from __future__ import annotations

from typing import Any

import click

from ..app import print_log_line
from ._util import ago, rpc


@click.group(name="container")
def container_group() -> None:
    """Look at and stop the containers of running apps."""


@container_group.command(name="list")
@click.option("--app", "app", default=None, help="Only this app's (a name or an ap- id).")
def list_containers(app: str | None) -> None:
    """List running and starting containers: id, app, function, state, age."""
    body = {} if app is None else ({"app_id": app} if app.startswith("ap-") else {"name": app})
    rows = rpc("ContainerList", body)["containers"]
    click.echo(
        f"{'CONTAINER ID':<26} {'APP':<24} {'FUNCTION':<24} {'STATE':<9} {'STARTED':<14} HOW"
    )
    for r in rows:
        app_label = r["app_name"] or r["app_id"]
        click.echo(
            f"{r['container_id']:<26} {app_label[:24]:<24} {r['function'][:24]:<24} "
            f"{r['state']:<9} {ago(r['started_at']):<14} {r.get('start', '')}".rstrip()
        )


@container_group.command()
@click.argument("container_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until it exits.")
def logs(container_id: str, follow: bool) -> None:
    """Print what container CONTAINER_ID printed (while it runs, or lately exited)."""
    after = 0
    while True:
        reply = rpc(
            "ContainerLogs",
            {
                "container_id": container_id,
                "after": after,
                "timeout": 30 if follow else 0,
                "limit": 5000,
            },
        )
        for row in reply["logs"]:
            print_log_line(row)
        after = reply["after"]
        if reply["more"]:
            continue
        if not follow or reply["state"] == "exited":
            return


@container_group.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.option("--pty", "pty", is_flag=True, help="On a terminal (interactive programs).")
@click.argument("container_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(container_id: str, command: tuple[str, ...], pty: bool) -> None:
    """Run COMMAND in container CONTAINER_ID (a function's ta- or a sandbox's sb- id),
    printing its output; exits with its code."""
    import sys
    import threading

    if pty:
        from .shell import run_on_terminal

        raise SystemExit(run_on_terminal(container_id, list(command)))

    from .. import sandbox

    sandboxes: Any = sandbox.Sandbox  # made at run time (ketch._sync)
    process = sandboxes.from_id(container_id).exec(*command, text=False)

    def copy(stream: Any, out: Any) -> None:
        for chunk in stream.lines():
            out.write(chunk)
            out.flush()

    copiers = [
        threading.Thread(target=copy, args=(process.stdout, sys.stdout.buffer)),
        threading.Thread(target=copy, args=(process.stderr, sys.stderr.buffer)),
    ]
    for copier in copiers:
        copier.start()
    for copier in copiers:
        copier.join()
    raise SystemExit(process.wait())


@container_group.command()
@click.argument("container_id")
def stop(container_id: str) -> None:
    """Stop container CONTAINER_ID; what it was running goes to another container."""
    rpc("ContainerStop", {"container_id": container_id})
    click.echo(f"stopping container {container_id}")
