"""``ketch modal-alias install|uninstall|status``: ``import modal`` and a ``modal`` command
for plain Python, opted into per environment.

``install`` writes three files into this interpreter's environment (or, with
``--user``, the user's site-packages and ``~/.local/bin``):

- ``_ketch_modal_alias.py`` and ``ketch-modal-alias.pth``: every interpreter start
  registers a finder (``ketch._modal_boot``) that answers ``import modal`` with ketch
  when no real ``modal`` package is installed;
- ``modal``: a command that is ``ketch`` (``modal run app.py``, ``modal deploy``,
  ``modal volume put`` ...), written only where no other ``modal`` command is.

``uninstall`` removes what ``install`` wrote and nothing else.
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

import click

BOOT_MODULE = "_ketch_modal_alias.py"
PTH_FILE = "ketch-modal-alias.pth"
MARK = "# written by `ketch modal-alias install`"


def _places(user: bool) -> tuple[Path, Path]:
    """(site-packages, scripts folder) of this environment, or of the user's."""
    if user:
        return Path(site.getusersitepackages()), Path(sysconfig.get_path("scripts", "posix_user"))
    return Path(sysconfig.get_path("purelib")), Path(sysconfig.get_path("scripts"))


def _script_text() -> str:
    return (
        f"#!{sys.executable}\n{MARK}: the `modal` command is ketch\n"
        "import sys\n\nfrom ketch.cli.main import main\n\n"
        "if __name__ == '__main__':\n    sys.exit(main(prog_name='modal'))\n"
    )


def _ours(path: Path) -> bool:
    try:
        return MARK in path.read_text(errors="replace")[:400]
    except OSError:
        return False


@click.group(name="modal-alias")
def modal_alias_group() -> None:
    """`import modal` and a `modal` command for plain Python (opt-in)."""


@modal_alias_group.command()
@click.option("--user", is_flag=True, help="Into the user's site-packages and ~/.local/bin.")
def install(user: bool) -> None:
    """Make plain `python` import ketch as `modal`, and add a `modal` command."""
    packages, scripts = _places(user)
    boot = (Path(__file__).parent.parent / "_modal_boot.py").read_text()
    try:
        packages.mkdir(parents=True, exist_ok=True)
        (packages / BOOT_MODULE).write_text(f"{MARK}\n{boot}")
        (packages / PTH_FILE).write_text(f"import _ketch_modal_alias  {MARK}\n")
    except OSError as exc:
        raise click.ClickException(
            f"cannot write to {packages} ({exc.strerror}); try `ketch modal-alias install --user`"
        ) from None
    click.echo(
        f"import modal: ketch, in {packages} (a real `modal` package, where installed, wins)"
    )
    command = scripts / "modal"
    if command.exists() and not _ours(command):
        click.echo(f"modal command: left alone, {command} is another program's")
        return
    scripts.mkdir(parents=True, exist_ok=True)
    command.write_text(_script_text())
    command.chmod(0o755)
    click.echo(f"modal command: {command}")


@modal_alias_group.command()
@click.option("--user", is_flag=True, help="From the user's site-packages and ~/.local/bin.")
def uninstall(user: bool) -> None:
    """Remove what `ketch modal-alias install` wrote."""
    packages, scripts = _places(user)
    removed = []
    for path in (packages / PTH_FILE, packages / BOOT_MODULE, scripts / "modal"):
        if path.exists() and _ours(path):
            path.unlink()
            removed.append(str(path))
    click.echo("removed " + ", ".join(removed) if removed else "nothing to remove")


@modal_alias_group.command()
def status() -> None:
    """Say whether `import modal` is ketch in plain Python here, and where `modal` points."""
    import importlib.util

    for user in (False, True):
        packages, scripts = _places(user)
        where = "user" if user else "environment"
        installed = _ours(packages / PTH_FILE)
        command = scripts / "modal"
        cmd = "ketch" if _ours(command) else ("another program" if command.exists() else "none")
        click.echo(
            f"{where}: alias {'installed' if installed else 'not installed'}; modal command: {cmd}"
        )
    spec = importlib.util.find_spec("modal")
    real = spec is not None and spec.origin is not None and "ketch" not in str(spec.origin)
    click.echo(
        "a real `modal` package is installed: "
        + ("yes (it wins in plain Python)" if real else "no")
    )
