"""Find and prepare the user's code inside a container.

The function is found by importing the user's module (as Modal does), not by
unpickling it, except for ``serialized=True``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import linecache
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from .. import _modal_alias
from .._spec import FunctionSpec
from ..exception import InvalidError
from ..partial import class_parameters, marked


@dataclass
class Service:
    """What a container runs: callables by method name (None for a plain function)."""

    callables: dict[str | None, Callable[..., Any]]
    exit_hooks: list[Callable[[], Any]] = field(default_factory=list)


def _in_container(spec: FunctionSpec) -> tuple[FunctionSpec, str | None]:
    """Where the sandbox runtime put the app's source (``KETCH_SOURCE_ROOT``, i.e. ``/root``).

    Returns the spec with container paths and the entry module's host path, under
    which its code is compiled so that tracebacks shown on the client (which reads
    source lines from the host file) show the user's lines.
    """
    root = os.environ.get("KETCH_SOURCE_ROOT")
    if not root or not spec.module_file or not spec.root_dir:
        return spec, None
    rel = os.path.relpath(spec.module_file, spec.root_dir)
    inside = dataclasses.replace(spec, root_dir=root, module_file=os.path.join(root, rel))
    return inside, spec.module_file


def _same_file(a: str | None, b: str) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _import_module(spec: FunctionSpec) -> Any:
    _modal_alias.install()  # a Modal app's `import modal` is ketch here too
    spec, host_file = _in_container(spec)
    if spec.root_dir and spec.root_dir not in sys.path:
        sys.path.insert(0, spec.root_dir)
    loaded = sys.modules.get(spec.module_name)
    if loaded is not None and (
        not spec.module_file or _same_file(getattr(loaded, "__file__", None), spec.module_file)
    ):
        return loaded
    # An app file named like a module already imported (secrets.py, queue.py...) is still
    # the user's module here: it is loaded from its file under its own name.
    if spec.module_file:
        mod_spec = importlib.util.spec_from_file_location(spec.module_name, spec.module_file)
        if mod_spec is None or mod_spec.loader is None:
            raise InvalidError(f"cannot import {spec.module_file}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[spec.module_name] = module
        try:
            if host_file is not None:
                with open(spec.module_file, encoding="utf-8") as fh:
                    source = fh.read()
                linecache.cache[host_file] = (len(source), None, source.splitlines(True), host_file)
                # dont_inherit: this module's own `from __future__ import annotations` must not leak into the user's
                exec(compile(source, host_file, "exec", dont_inherit=True), module.__dict__)
            else:
                mod_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(spec.module_name, None)
            raise
        return module
    return importlib.import_module(spec.module_name)


def _resolve(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _hydrate(obj: Any, app_id: str, function_ids: dict[str, str]) -> None:
    """Give the user's App the ids of its functions, so calls between them work."""
    impl = getattr(obj, "_ketch_impl", None)
    app = getattr(impl, "_app", None)
    if app is not None:
        app._hydrate_in_container(app_id, function_ids)


def load_user_object(spec: FunctionSpec, app_id: str, function_ids: dict[str, str]) -> Any:
    """The user's raw function or class."""
    if spec.serialized_fn is not None:
        return cloudpickle.loads(spec.serialized_fn)
    module = _import_module(spec)
    obj = _resolve(module, spec.qualname)
    _hydrate(obj, app_id, function_ids)
    impl = getattr(obj, "_ketch_impl", None)
    if impl is not None:
        return impl._raw_f if not spec.is_class else impl._user_cls
    return obj


@dataclass
class Snapshot:
    """What a memory snapshot's template prepared: the user's object (and a class's
    instance, its ``@enter(snap=True)`` hooks run), for the containers forked from it."""

    spec: FunctionSpec
    params: dict[str, Any]
    obj: Any
    instance: Any


# Set in a fork template by :func:`prepare_snapshot`; its forks start from it.
SNAPSHOT: Snapshot | None = None


def _hooks(user_cls: type, snap: bool | None) -> list[str]:
    """``@enter`` hooks in definition order; only the ``snap=`` ones unless None."""
    names = marked(user_cls, "__ketch_enter__")
    if snap is None:
        return names
    return [
        n
        for n in names
        if bool(getattr(getattr(user_cls, n), "__ketch_enter_snap__", False)) is snap
    ]


def _run_hooks(instance: Any, names: list[str]) -> None:
    for name in names:
        result = getattr(instance, name)()
        if inspect.isawaitable(result):
            import asyncio

            asyncio.run(result)  # type: ignore[arg-type]


def prepare_snapshot(spec: FunctionSpec, params: dict[str, Any] | None) -> Snapshot:
    """Import the user's code and run its ``@enter(snap=True)`` hooks: the state every
    container of ``spec`` (with ``params``) forks from."""
    obj = load_user_object(spec, "", {})
    instance = None
    if spec.is_class:
        assert isinstance(obj, type)
        instance = _instantiate(obj, params or {})
        _run_hooks(instance, _hooks(obj, snap=True))
    return Snapshot(spec, dict(params or {}), obj, instance)


def _from_snapshot(spec: FunctionSpec, params: dict[str, Any] | None) -> Snapshot | None:
    snap = SNAPSHOT
    if snap is None or (snap.spec.module_name, snap.spec.qualname) != (
        spec.module_name,
        spec.qualname,
    ):
        return None
    return snap if snap.params == dict(params or {}) else None


def build_service(
    spec: FunctionSpec, params: dict[str, Any] | None, app_id: str, function_ids: dict[str, str]
) -> Service:
    snap = _from_snapshot(spec, params)
    if snap is not None:  # forked from its memory snapshot: the rest of its start
        if spec.serialized_fn is None:
            _hydrate(_resolve(_import_module(spec), spec.qualname), app_id, function_ids)
        obj, instance = snap.obj, snap.instance
        hooks = _hooks(obj, snap=False) if spec.is_class else []
    else:
        obj = load_user_object(spec, app_id, function_ids)
        instance = _instantiate(obj, params or {}) if spec.is_class else None
        # With snapshots the snap=True hooks come first, as they would before a restore.
        hooks = (
            []
            if not spec.is_class
            else _hooks(obj, True) + _hooks(obj, False)
            if spec.memory_snapshot
            else _hooks(obj, None)
        )
    if not spec.is_class:
        return Service({None: obj})
    assert isinstance(obj, type)
    _run_hooks(instance, hooks)
    callables: dict[str | None, Callable[..., Any]] = {
        name: getattr(instance, name)
        for name in marked(obj, "__ketch_method__")
        + marked(obj, "__ketch_batched__")
        + marked(obj, "__ketch_web__")
    }
    exit_hooks = [getattr(instance, name) for name in marked(obj, "__ketch_exit__")]
    return Service(callables, exit_hooks)


def _instantiate(user_cls: type, params: dict[str, Any]) -> Any:
    declared = class_parameters(user_cls)
    if not declared and user_cls.__init__ is not object.__init__:  # type: ignore[misc]
        return user_cls()
    instance: Any = object.__new__(user_cls)
    for name, param in declared.items():
        if name in params:
            setattr(instance, name, params[name])
        elif param.has_default:
            setattr(instance, name, param.default)
        else:
            raise InvalidError(f"missing value for parameter {name!r} of {user_cls.__name__}")
    return instance
