"""``ketch serve FILE``: serve an app's web endpoints, reloading when its source changes.

The app runs in a child process (an ephemeral app, as with ``ketch run``,
whose endpoints' labels end in ``-dev``). When a Python file of the app's
directory changes (``watchfiles``), the child stops its app and exits, and a
new child runs the edited code; the endpoints keep their labels, so they
keep their ports and URLs. Ctrl-C stops it all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from ._util import WholeLines, find_app, import_file, print_web_urls

RELOAD_DEBOUNCE_MS = 200


@click.command()
@click.argument("path")
@click.option(
    "--child", is_flag=True, hidden=True, help="Run the app once (used by the watching parent)."
)
def serve(path: str, child: bool) -> None:
    """Serve FILE's web endpoints until Ctrl-C, reloading on every change to its source.

    Example: ketch serve app.py   (then edit app.py: the same URLs serve the new code)
    """
    if child:
        _run_once(path)
        return
    import watchfiles

    file = Path(path).resolve()
    if not file.is_file():
        raise click.UsageError(f"no such file: {path}")
    proc = _start(file)
    try:
        for changes in watchfiles.watch(
            file.parent,
            watch_filter=watchfiles.PythonFilter(),
            debounce=RELOAD_DEBOUNCE_MS,
            raise_interrupt=True,
        ):
            names = sorted({Path(p).name for _, p in changes})
            click.echo(f"ketch serve: {', '.join(names)} changed; reloading", err=True)
            _stop(proc)
            proc = _start(file)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(proc)


def _start(file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ketch.cli.main", "serve", "--child", str(file)])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask the child to stop its app (SIGTERM), then make sure it is gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_once(path: str) -> None:
    sys.stdout, sys.stderr = WholeLines(sys.stdout), WholeLines(sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        module = import_file(path)
        app = find_app(module, path)
    except Exception as exc:  # a broken edit: say so and wait for the next one
        from .._traceback import print_user_traceback

        print_user_traceback(exc)
        click.echo("ketch serve: fix the error and save; serving resumes then", err=True)
        stop.wait()
        return
    with app.run():
        if not print_web_urls(app):
            click.echo(
                f"ketch serve: {path} has no web endpoints; its app runs until Ctrl-C", err=True
            )
        click.echo(
            f"ketch serve: serving {path} (pid {os.getpid()}) at {time.strftime('%H:%M:%S')}",
            err=True,
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
