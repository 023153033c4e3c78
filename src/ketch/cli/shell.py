"""``ketch shell``: an interactive shell in a container, on a real terminal.

* ``ketch shell FILE[::function]``: a new container of that function, as its
  calls get one (image, Secrets, Volumes, resources, GPUs, its source at
  ``/root``), on an ephemeral app that ends with the shell;
* ``ketch shell --image-of FILE[::function]``: the same image, nothing else;
* ``ketch shell sb-ID`` / ``ta-ID``: inside a running sandbox, or a running
  function's container (``ketch container list`` shows them).

``--cmd`` runs one command instead of the shell. The terminal is put in raw
mode, keys go to the container as they are typed (Ctrl-C included), and its
window size follows this one's (``SIGWINCH``).
"""

from __future__ import annotations

from typing import Any

import click

from .._client import _Client
from .._sync import run_sync
from .._terminal import Attached, raw_terminal, terminal_size
from ..exception import Error
from ..sandbox import _Sandbox
from ._util import import_file

# bash where the image has it, else sh; a login-like shell in the image's workdir.
SHELL = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"


def run_on_terminal(sandbox_id: str, argv: list[str]) -> int:
    """Run ``argv`` in the sandbox on a terminal connected to this one; its exit code."""

    async def go() -> int:
        sb = _Sandbox(sandbox_id)
        process = await sb.exec(*argv, pty=terminal_size(), text=False)
        return await Attached(await _Client.get(), sandbox_id, process._exec_id).run()

    with raw_terminal():
        return run_sync(go())


def _shell_argv(cmd: str | None) -> list[str]:
    return ["sh", "-c", cmd] if cmd else ["sh", "-c", SHELL]


@click.command()
@click.argument("target", required=False)
@click.option("--image-of", "image_of", default=None, help="FILE[::function]: its image only.")
@click.option("--cmd", "cmd", default=None, help="Run this command (with sh -c) instead.")
def shell(target: str | None, image_of: str | None, cmd: str | None) -> None:
    """A shell in a new container of FILE[::function], or in running container sb-/ta-ID.

    Examples: ketch shell app.py::train, ketch shell sb-abc123 --cmd 'ls /'
    """
    if bool(target) == bool(image_of):
        raise click.UsageError("give FILE[::function], --image-of FILE[::function], or sb-ID")
    try:
        if target and target.startswith(("sb-", "ta-")):
            code = run_on_terminal(target, _shell_argv(cmd))
        else:
            code = _in_new_container(str(target or image_of), cmd, image_only=bool(image_of))
    except Error as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)


def _in_new_container(target: str, cmd: str | None, image_only: bool) -> int:
    from .run import _pick

    path, _, name = target.partition("::")
    module = import_file(path)
    app, fn, kind = _pick(module, path, name or None)
    if kind != "function":
        raise click.UsageError(f"{target} is a local entrypoint; name a function with ::NAME")
    from .. import sandbox
    from .._sync import _unwrap
    from ..image import Image

    sandboxes: Any = sandbox.Sandbox  # made at run time (ketch._sync)
    wire = _unwrap(fn)._spec.image
    with app.run():
        if image_only:
            image = Image.from_wire(wire) if wire else None
            sb = _unwrap(sandboxes.create(app=app, image=image, timeout=24 * 3600))
        else:
            sb = run_sync(_Sandbox._for_function(_unwrap(app), _unwrap(fn), timeout=24 * 3600))
        try:
            return run_on_terminal(sb.object_id, _shell_argv(cmd))
        finally:
            run_sync(sb.terminate())
