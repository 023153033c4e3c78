"""Arguments checked against a function's type hints before they travel.

A GPU job that loads a model for two minutes and then fails on an argument of the
wrong type wastes both; ``.remote``, ``.spawn`` and ``.map`` check each argument
against the function's annotations here, in the caller's process, and raise an
``InvalidError`` naming the parameter before anything is sent.

The check is lax, as pydantic's lax mode is: ``1`` passes for ``float``, a tuple
for ``list[int]``, a numpy integer for ``int``. An argument whose value is an
instance of its plain annotation (``int``, ``str``, a class) passes without
pydantic; anything else (generics, unions, a value of another type) goes through a
pydantic ``TypeAdapter``, built once per parameter. Annotations that cannot be
resolved or that pydantic cannot express are not checked: the check never stops
a call that would have worked for a reason of its own. ``validate_args=False`` on
the decorator turns it off. Inside containers, where the runtime bundle carries no
pydantic, only the plain-instance part runs.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from . import _sync
from .exception import InvalidError

_SKIP = (Any, object, inspect.Parameter.empty)
_MAX_SHOWN = 60


class _Param:
    """How one parameter is checked: by ``isinstance`` when that settles it, else pydantic."""

    __slots__ = ("name", "annotation", "plain", "adapter", "each")

    def __init__(self, name: str, annotation: Any, each: bool) -> None:
        self.name = name
        self.annotation = annotation
        self.plain = annotation if isinstance(annotation, type) else None
        self.adapter: Any = None  # a pydantic TypeAdapter, made on first need; False: none
        self.each = each  # *args / **kwargs: each value is checked

    def check(self, display: str, value: Any) -> None:
        values = (value.values() if isinstance(value, dict) else value) if self.each else (value,)
        for item in values:
            # The SDK hands ketch's own objects (a Dict, a Volume) over as their async
            # implementations: check the public class the user annotated with.
            wrapper = _sync._IMPL_TO_WRAPPER.get(type(item))
            if wrapper is not None:
                item = _sync._wrap(item)
            if self.plain is not None and isinstance(item, self.plain):
                continue
            if self.plain is float and isinstance(item, int) and not isinstance(item, bool):
                continue
            self._check_with_pydantic(display, item)

    def _check_with_pydantic(self, display: str, value: Any) -> None:
        if self.adapter is None:
            self.adapter = _adapter(self.annotation)
        if self.adapter is False:
            return
        try:
            self.adapter.validate_python(value)
        except Exception as exc:  # pydantic's ValidationError (imported lazily)
            errors = getattr(exc, "errors", None)
            if errors is None:
                return  # not a validation failure: never block a call on our own problem
            first = errors()[0] if errors() else {}
            where = "".join(f"[{p!r}]" for p in first.get("loc", ()))
            shown = repr(value)
            if len(shown) > _MAX_SHOWN:
                shown = shown[: _MAX_SHOWN - 3] + "..."
            raise InvalidError(
                f"{display}(): argument {self.name!r} must be {_type_name(self.annotation)}, "
                f"got {type(value).__name__} {shown}"
                + (f" ({first.get('msg', '')} at {where})" if where else "")
                + "; pass validate_args=False to the decorator to send it anyway"
            ) from None


def _adapter(annotation: Any) -> Any:
    try:
        from pydantic import ConfigDict, TypeAdapter
    except ImportError:  # a container's runtime bundle: the plain part only
        return False
    try:
        return TypeAdapter(annotation)
    except Exception:
        pass
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:
        return False


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


class ArgChecker:
    """The annotated parameters of one function, checked against a call's bound arguments."""

    def __init__(self, params: dict[str, _Param]) -> None:
        self.params = params

    def check(self, display: str, arguments: dict[str, Any]) -> None:
        for name, value in arguments.items():
            param = self.params.get(name)
            if param is not None:
                param.check(display, value)


def checker_for(
    fn: Callable[..., Any] | None, bound_method: bool, batched: bool = False
) -> ArgChecker | None:
    """An ``ArgChecker`` for ``fn``'s annotated parameters; None if it has none (or its
    hints cannot be resolved). A ``@batched`` function takes lists of what callers pass:
    ``xs: list[int]`` checks each call's ``int``."""
    if fn is None:
        return None
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    params: dict[str, _Param] = {}
    for index, (name, p) in enumerate(signature.parameters.items()):
        if bound_method and index == 0:
            continue
        annotation = hints.get(name, inspect.Parameter.empty)
        if any(annotation is skip for skip in _SKIP):
            continue
        if batched:
            if typing.get_origin(annotation) is not list or len(typing.get_args(annotation)) != 1:
                continue
            annotation = typing.get_args(annotation)[0]
            if any(annotation is skip for skip in _SKIP):
                continue
        each = p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        params[name] = _Param(name, annotation, each)
    return ArgChecker(params) if params else None
