"""Classes whose methods run in containers, with lifecycle hooks and parameters.

Example::

    @app.cls()
    class Model:
        size: int = ketch.parameter(default=1)

        @ketch.enter()
        def load(self):
            self.table = list(range(self.size))

        @ketch.method()
        def lookup(self, i):
            return self.table[i]

    Model(size=10).lookup.remote(3)
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from . import _sync
from ._serialization import pack
from ._spec import FunctionSpec
from .exception import InvalidError, NotFoundError
from .functions import _Function
from .partial import check_param_value, class_parameters, marked

if TYPE_CHECKING:
    from .app import _App
    from .functions import Function


class _Cls:
    """A class registered with ``@app.cls()``; call it with parameters to get an object."""

    def __init__(self, app: _App | None, fn: _Function, user_cls: type | None) -> None:
        self._app = app
        self._fn = fn
        self._user_cls = user_cls

    def __repr__(self) -> str:
        return f"_Cls({self._fn.tag!r})"

    @classmethod
    def from_name(cls, app_name: str, name: str) -> _Cls:
        """A handle to a class of a deployed app, looked up on first use.

        Example: ``ketch.Cls.from_name("my-app", "Model")(size=3).predict.remote(1)``
        """
        return cls(None, _Function.from_name(app_name, name), None)

    async def hydrate(self) -> _Cls:
        await self._fn._resolve()
        return self

    def with_options(self, **options: Any) -> _Cls:
        """This class with some options changed (``Function.with_options``'s), in containers
        of its own.

        Example: ``Model.with_options(gpu="A100")(size=3).predict.remote(x)``
        """
        return _Cls(self._app, self._fn.with_options(**options), self._user_cls)

    def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> _Cls:
        """This class taking up to ``max_inputs`` inputs at once per container."""
        fn = self._fn.with_concurrency(max_inputs=max_inputs, target_inputs=target_inputs)
        return _Cls(self._app, fn, self._user_cls)

    def with_batching(self, *, max_batch_size: int, wait_ms: int) -> _Cls:
        """This class's ``@ketch.batched`` method taking batches of this size and wait."""
        fn = self._fn.with_batching(max_batch_size=max_batch_size, wait_ms=wait_ms)
        return _Cls(self._app, fn, self._user_cls)

    def __call__(self, *args: Any, **params: Any) -> _Obj:
        if args:
            raise InvalidError("class parameters are passed by keyword: Model(size=3)")
        if self._user_cls is not None:
            declared = class_parameters(self._user_cls)
            unknown = sorted(set(params) - set(declared))
            if unknown:
                raise InvalidError(
                    f"{self._user_cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
                    f"declared: {', '.join(declared) or 'none'}"
                )
            missing = [n for n, p in declared.items() if not p.has_default and n not in params]
            if missing:
                raise InvalidError(
                    f"{self._user_cls.__name__} needs a value for {', '.join(missing)}"
                )
            params = {n: params.get(n, p.default) for n, p in declared.items()}
        for name, value in params.items():
            check_param_value(name, value)
        blob = pack(dict(sorted(params.items()))) if params else None
        return _Obj(self, blob)

    def _method_names(self) -> list[str]:
        return list(self._fn._spec.methods)


class _Obj:
    """One parameterization of a class; its methods are functions."""

    def __init__(self, cls: _Cls, params: bytes | None) -> None:
        self._cls = cls
        self._params = params
        self._methods: dict[str, _Function] = {}

    def __repr__(self) -> str:
        return f"_Obj({self._cls._fn.tag!r})"

    async def update_autoscaler(
        self,
        *,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
    ) -> None:
        """``Function.update_autoscaler`` for this class (every set of its parameters)."""
        await self._cls._fn.update_autoscaler(
            min_containers=min_containers,
            max_containers=max_containers,
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
        )

    def __getattr__(self, name: str) -> _Function:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = self._methods.get(name)
        if fn is None:
            names = self._cls._method_names()
            if names and name not in names:
                raise AttributeError(f"{self._cls._fn.tag} has no @ketch.method() named {name!r}")
            raw = getattr(self._cls._user_cls, name, None) if self._cls._user_cls else None
            fn = _Function(
                self._cls._app,
                self._cls._fn._spec,
                raw,
                params=self._params,
                method=name,
                parent=self._cls._fn,
            )
            self._methods[name] = fn
        return fn


def make_local_instance(class_fn: _Function, params: bytes | None) -> Any:
    """Build the user's class here (for ``.local()``), running its ``@enter`` hooks."""
    from ._serialization import unpack

    owner = class_fn._local_owner
    if owner is None:
        raise NotFoundError("this class has no local code")
    instance: Any = object.__new__(owner)
    for name, param in class_parameters(owner).items():
        values = unpack(params) if params else {}
        setattr(instance, name, values.get(name, param.default))
    for name in marked(owner, "__ketch_enter__"):
        result = getattr(instance, name)()
        if inspect.isawaitable(result):
            raise InvalidError("async @enter hooks cannot run with .local()")
    return instance


def class_spec_methods(user_cls: type) -> dict[str, dict[str, Any]]:
    methods: dict[str, dict[str, Any]] = {}
    # A @ketch.batched method is a method without @ketch.method(), as in Modal.
    remote = marked(user_cls, "__ketch_method__")
    remote += [n for n in marked(user_cls, "__ketch_batched__") if n not in remote]
    for name in remote:
        fn = getattr(user_cls, name)
        flag = getattr(fn, "__ketch_method__", {}).get("is_generator")
        is_gen = (
            flag
            if flag is not None
            else inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        )
        methods[name] = {"is_generator": bool(is_gen)}
    for name in marked(user_cls, "__ketch_web__"):  # web endpoints need no @ketch.method()
        methods[name] = {"is_generator": False, "web": dict(getattr(user_cls, name).__ketch_web__)}
    return methods


def class_batching(user_cls: type, methods: dict[str, dict[str, Any]]) -> tuple[int, int] | None:
    """``(max_batch_size, wait_ms)`` of the class's one ``@ketch.batched`` method, if it has one.

    As in Modal, such a class has no other methods: its containers take inputs in batches.
    """
    batched = marked(user_cls, "__ketch_batched__")
    if not batched:
        return None
    others = sorted(set(methods) - set(batched))
    if len(batched) > 1 or others:
        raise InvalidError(
            f"{user_cls.__name__}: a class with a @ketch.batched method has no other methods "
            f"(found {', '.join(sorted(set(batched) | set(others)))})"
        )
    return getattr(user_cls, batched[0]).__ketch_batched__  # type: ignore[no-any-return]


def new_class_function(app: _App, spec: FunctionSpec, user_cls: type) -> _Cls:
    fn = _Function(app, spec, None)
    fn._local_owner = user_cls
    return _Cls(app, fn, user_cls)


if TYPE_CHECKING:
    # What ``@app.cls()`` returns is typed as the user's class (see ``App.cls``);
    # these are the handles ``Cls.from_name`` gives, whose methods are found by name.
    class Cls:
        """A class of a deployed app: call it with parameters to get an object.

        Example: ``ketch.Cls.from_name("my-app", "Model")(size=3).predict.remote(1)``
        """

        _ketch_impl: _Cls

        @classmethod
        def from_name(cls, app_name: str, name: str) -> Cls: ...
        @_sync.aio_method
        def hydrate(self, /) -> Cls: ...
        def __call__(self, **params: str | int | bool | bytes | float) -> Obj: ...
        def with_options(self, **options: Any) -> Cls: ...
        def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> Cls: ...
        def with_batching(self, *, max_batch_size: int, wait_ms: int) -> Cls: ...

    class Obj:
        """One parameterization of a class; its methods are functions."""

        _ketch_impl: _Obj

        @_sync.aio_method
        def update_autoscaler(
            self,
            /,
            *,
            min_containers: int | None = None,
            max_containers: int | None = None,
            buffer_containers: int | None = None,
            scaledown_window: int | None = None,
        ) -> None: ...

        def __getattr__(self, name: str) -> Function[..., Any]: ...

else:
    Cls = _sync.synchronize_api(_Cls)
    Obj = _sync.synchronize_api(_Obj)
