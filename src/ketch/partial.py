"""Decorators that mark functions and methods: ``method``, ``enter``, ``exit``,
``concurrent``, ``batched`` and ``parameter``.

They mark the object they decorate and return it unchanged, so the user's
signature stays visible to type checkers (``method`` shows it as a
``Function``, as objects of the class do; ``batched`` hides it, see there).

Example::

    @app.cls()
    class Model:
        size: int = ketch.parameter(default=1)

        @ketch.enter()
        def load(self): self.weights = ...

        @ketch.method()
        def predict(self, x): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .exception import InvalidError

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Concatenate, ParamSpec, Protocol, Self, overload

    from .functions import Function

    P = ParamSpec("P")
    R = TypeVar("R")
    L = TypeVar("L")

    class _Method(Protocol[P, R, L]):
        """A ``ketch.method()`` method: read from an object of an ``@app.cls`` class,
        it is a ``Function`` (``Model().predict.remote(x)``); called, it runs here."""

        def __call__(self, obj: Any, /, *args: P.args, **kwargs: P.kwargs) -> L: ...
        @overload
        def __get__(self, obj: None, owner: Any, /) -> Self: ...
        @overload
        def __get__(self, obj: object, owner: Any, /) -> Function[P, R, L]: ...

    class _MethodDecorator(Protocol):
        @overload
        def __call__(
            self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
        ) -> _Method[P, R, Coroutine[Any, Any, R]]: ...
        @overload
        def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> _Method[P, R, R]: ...


F = TypeVar("F", bound=Callable[..., Any])
_PARAM_TYPES = (str, int, bool, bytes, float)


def _check_callable(obj: Any, decorator: str) -> None:
    if hasattr(obj, "_ketch_impl"):
        raise InvalidError(
            f"put @ketch.{decorator}() below @app.function() / @app.cls(), not above it"
        )
    if not callable(obj):
        raise InvalidError(f"@ketch.{decorator}() decorates a function or method, not {obj!r}")


def method(*, is_generator: bool | None = None) -> _MethodDecorator:
    """Expose a method of an ``@app.cls`` class for remote calls."""

    def wrap(fn: F) -> F:
        _check_callable(fn, "method")
        fn.__ketch_method__ = {"is_generator": is_generator}  # type: ignore[attr-defined]
        return fn

    return cast("_MethodDecorator", wrap)  # the method itself, typed as what objects show


def enter(*, snap: bool = False) -> Callable[[F], F]:
    """Run this method once when a container starts, before it takes inputs.

    ``snap=True`` with ``enable_memory_snapshot=True``: it runs once, before the
    snapshot its containers start from (so without GPUs, threads or open
    connections); the others run in each container, after.
    """

    def wrap(fn: F) -> F:
        _check_callable(fn, "enter")
        fn.__ketch_enter__ = True  # type: ignore[attr-defined]
        fn.__ketch_enter_snap__ = bool(snap)  # type: ignore[attr-defined]
        return fn

    return wrap


def exit() -> Callable[[F], F]:  # noqa: A001 - Modal's public name (ketch.exit)
    """Run this method when a container stops (scale-down or shutdown)."""

    def wrap(fn: F) -> F:
        _check_callable(fn, "exit")
        fn.__ketch_exit__ = True  # type: ignore[attr-defined]
        return fn

    return wrap


def concurrent(*, max_inputs: int, target_inputs: int | None = None) -> Callable[[F], F]:
    """Let one container run up to ``max_inputs`` inputs at once.

    ``target_inputs`` is what the autoscaler aims for per container (default
    ``max_inputs``); containers take more, up to ``max_inputs``, in bursts.
    Stack it under ``@app.function()`` or on an ``@app.cls()`` class.
    """
    if not isinstance(max_inputs, int) or max_inputs < 1 or max_inputs > 1000:
        raise InvalidError(f"max_inputs must be an int between 1 and 1000, got {max_inputs!r}")
    if target_inputs is not None and (
        not isinstance(target_inputs, int) or not 1 <= target_inputs <= max_inputs
    ):
        raise InvalidError(
            f"target_inputs must be an int between 1 and max_inputs, got {target_inputs!r}"
        )

    def wrap(obj: F) -> F:
        _check_callable(obj, "concurrent")
        obj.__ketch_concurrent__ = (max_inputs, target_inputs)  # type: ignore[attr-defined]
        return obj

    return wrap


def batched(
    *, max_batch_size: int, wait_ms: int
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Collect single calls into lists of up to ``max_batch_size``, waiting at most ``wait_ms``.

    The function takes a list per parameter and returns a list of results of
    the same length; callers pass single items and get single results. (Type
    checkers cannot take the lists apart, so the signature reads as ``...``.)
    """
    if not isinstance(max_batch_size, int) or not 1 <= max_batch_size <= 1000:
        raise InvalidError(
            f"max_batch_size must be an int between 1 and 1000, got {max_batch_size!r}"
        )
    if not isinstance(wait_ms, int) or not 0 <= wait_ms <= 10 * 60 * 1000:
        raise InvalidError(f"wait_ms must be an int between 0 and 600000, got {wait_ms!r}")

    def wrap(fn: F) -> F:
        _check_callable(fn, "batched")
        fn.__ketch_batched__ = (max_batch_size, wait_ms)  # type: ignore[attr-defined]
        return fn

    return wrap


class _Parameter:
    """The class attribute that ``ketch.parameter()`` returns."""

    _NO_DEFAULT = object()

    def __init__(self, default: Any = _NO_DEFAULT, init: bool = True) -> None:
        if default is not self._NO_DEFAULT and not isinstance(default, _PARAM_TYPES):
            raise InvalidError(
                f"parameter defaults must be str, int, bool, bytes or float, not {default!r}"
            )
        self.default = default
        self.init = init

    @property
    def has_default(self) -> bool:
        return self.default is not self._NO_DEFAULT

    def __repr__(self) -> str:
        return (
            f"ketch.parameter(default={self.default!r})"
            if self.has_default
            else "ketch.parameter()"
        )


def parameter(*, default: Any = _Parameter._NO_DEFAULT, init: bool = True) -> Any:
    """Declare a class parameter; each set of values gets its own containers.

    Example: ``size: int = ketch.parameter(default=1)``, then ``Model(size=3)``.
    """
    return _Parameter(default, init)


def class_parameters(user_cls: type) -> dict[str, _Parameter]:
    params: dict[str, _Parameter] = {}
    for klass in reversed(user_cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, _Parameter):
                params[name] = value
    return params


def marked(user_cls: type, marker: str) -> list[str]:
    """Names of the methods of ``user_cls`` carrying ``marker``, in definition order."""
    names: list[str] = []
    for klass in reversed(user_cls.__mro__):
        for name, value in vars(klass).items():
            if getattr(value, marker, None) and name not in names:
                names.append(name)
    return names


def check_param_value(name: str, value: Any) -> None:
    if not isinstance(value, _PARAM_TYPES):
        raise InvalidError(
            f"parameter {name!r} must be str, int, bool, bytes or float, not {type(value).__name__}"
        )
