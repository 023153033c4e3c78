"""``ketch run FILE[::NAME] [ARGS]``: run an app's local entrypoint or one function."""

from __future__ import annotations

import asyncio
import inspect
import sys
import typing
from typing import Any

import click

from .._traceback import print_user_traceback
from ..app import App
from ._util import WholeLines, find_apps, import_file, print_web_urls


def _pick(module: Any, path: str, name: str | None) -> tuple[Any, Any, str]:
    """(app, callable, kind) where kind is 'entrypoint' or 'function'."""
    apps = find_apps(module)
    if not apps:
        raise click.UsageError(f"{path} defines no ketch.App")
    if name and "." in name:
        app_var, name = name.split(".", 1)
        app = getattr(module, app_var, None)
        if not isinstance(app, App):
            raise click.UsageError(f"{app_var} in {path} is not a ketch.App")
        apps = [app]
    for app in apps:
        entrypoints = app.registered_entrypoints
        functions = app.registered_functions
        if name is None:
            if len(entrypoints) == 1:
                return app, next(iter(entrypoints.values())), "entrypoint"
            if not entrypoints and len(functions) == 1:
                return app, next(iter(functions.values())), "function"
            continue
        if name in entrypoints:
            return app, entrypoints[name], "entrypoint"
        if name in functions:
            return app, functions[name], "function"
    choices = sorted(
        {n for a in apps for n in [*a.registered_entrypoints, *a.registered_functions]}
    )
    what = f"nothing named {name!r}" if name else "several entrypoints or functions"
    raise click.UsageError(
        f"{path} has {what}; choose one with {path}::NAME from: {', '.join(choices)}"
    )


def _options_for(fn: Any) -> list[click.Parameter]:
    hints: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        pass
    options: list[click.Parameter] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(
            param.name, str if param.default is param.empty else type(param.default)
        )
        flag = "--" + param.name.replace("_", "-")
        if annotation is bool:
            options.append(
                click.Option(
                    [f"{flag}/--no-{param.name.replace('_', '-')}"],
                    default=param.default is True,
                    show_default=True,
                )
            )
            continue
        click_type = {int: click.INT, float: click.FLOAT, str: click.STRING}.get(
            annotation, click.STRING
        )
        required = param.default is param.empty
        options.append(
            click.Option(
                [flag, param.name],
                type=click_type,
                required=required,
                default=None if required else param.default,
                show_default=not required,
            )
        )
    return options


def _call(fn: Any, kind: str, kwargs: dict[str, Any]) -> Any:
    if kind == "function":
        return fn.remote(**kwargs)
    result = fn(**kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


@click.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    }
)
@click.argument("target")
@click.option(
    "--detach",
    is_flag=True,
    help="Accepted for Modal compatibility; the app stops when the run ends.",
)
@click.option(
    "-i",
    "--interactive",
    is_flag=True,
    help="A breakpoint() or ketch.interact() in remote code gets this terminal.",
)
@click.pass_context
def run(ctx: click.Context, target: str, detach: bool, interactive: bool) -> None:
    """Run FILE's local entrypoint (or one function) on an ephemeral app.

    Example: ketch run app.py::main --n 3
    """
    path, _, name = target.partition("::")
    sys.stdout, sys.stderr = WholeLines(sys.stdout), WholeLines(sys.stderr)
    module = import_file(path)
    app, fn, kind = _pick(module, path, name or None)
    raw = fn.get_raw_f() if kind == "function" else fn
    command = click.Command(name=target, params=_options_for(raw), callback=lambda **kw: kw)
    try:
        kwargs = command.main(
            list(ctx.args), prog_name=f"ketch run {target}", standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(2) from None
    if not isinstance(kwargs, dict):  # --help was shown
        return
    try:
        with app.run(interactive=interactive):
            print_web_urls(app)
            result = _call(fn, kind, kwargs)
    except (KeyboardInterrupt, SystemExit, click.exceptions.Exit):
        raise
    except Exception as exc:
        print_user_traceback(exc)
        raise SystemExit(1) from None
    if kind == "function" and result is not None:
        click.echo(result)
