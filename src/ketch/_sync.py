"""Blocking wrappers generated from ketch's async implementation.

The async classes (``_Function``, ``_App``, ...) are the only real code. This
module runs them on one background event loop thread and generates, for each
async class, a public class whose methods block, with an ``.aio`` attribute
for use from async code::

    result = f.remote(2)              # blocking
    result = await f.remote.aio(2)    # async
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import queue
import threading
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .exception import InvalidError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Coroutine, Generator
    from typing import Concatenate, Generic, ParamSpec, Protocol

T = TypeVar("T")

_IMPL_TO_WRAPPER: dict[type, type] = {}


class _LoopThread:
    """The single event loop that every blocking call runs its coroutine on."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def _run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=_run, name="ketch-loop", daemon=True)
                thread.start()
                ready.wait()
                self._thread = thread
                self._loop = loop
        return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def reset_after_fork(self) -> None:
        _thread_state.__dict__.pop("loop", None)
        closer = _thread_state.__dict__.pop("closer", None)
        if closer is not None:
            closer.loop = None  # the parent's loop: not this process's to close
        self._loop = None
        self._thread = None
        self._lock = threading.Lock()


_loop_thread = _LoopThread()
os.register_at_fork(after_in_child=_loop_thread.reset_after_fork)


def get_loop() -> asyncio.AbstractEventLoop:
    """The background loop (started on first use)."""
    return _loop_thread.loop()


_thread_state = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop = getattr(_thread_state, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        loop.set_task_factory(_counted_task)
        loop.ketch_tasks = 0  # type: ignore[attr-defined]
        _thread_state.loop = loop
        _thread_state.closer = _LoopCloser(loop)
    return loop


class _LoopCloser:
    """Closes a thread's own loop when the thread ends.

    A thread's locals are dropped when it ends, and this object with them: its
    loop then shuts down its async generators (which closes the loop's client,
    ``_client._close_with_loop``) and closes, so a program that makes ketch calls
    from many short-lived threads keeps no loop, selector or socket per thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop: asyncio.AbstractEventLoop | None = loop

    def __del__(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed() or loop.is_running():
            return
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:  # another loop runs in this thread, or the interpreter is exiting
            pass
        finally:
            loop.close()


def _counted_task(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """Task factory of the threads' own loops: they keep count of their unfinished tasks."""
    task = asyncio.Task(coro, loop=loop, **kwargs)
    loop.ketch_tasks += 1  # type: ignore[attr-defined]
    task.add_done_callback(_task_done)
    return task


def _task_done(task: asyncio.Task[Any]) -> None:
    task.get_loop().ketch_tasks -= 1  # type: ignore[attr-defined]


def blocking_allowed() -> bool:
    """Whether the running coroutine may block its thread on I/O.

    True for a blocking call running alone on its thread's own loop (see
    ``run_sync``): the thread waits for it anyway and nothing else would run.
    """
    loop = getattr(_thread_state, "loop", None)
    if loop is None or loop.ketch_tasks > 1:
        return False
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(coro: Awaitable[T], background: bool = False) -> T:
    """Run ``coro`` to completion from blocking code.

    Short calls run on an event loop owned by the calling thread, which costs
    no thread hop (this is what keeps a warm ``.remote()`` fast). Work that
    must outlive the call (an app's log follower, a stream being pumped) runs
    on the shared background loop: ``background=True``.
    """
    if _loop_thread.in_loop_thread():
        raise InvalidError("a blocking ketch call was made from ketch's own event loop; use .aio")
    if not background and not _loop_running_here():
        return _thread_loop().run_until_complete(_as_coroutine(coro))
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(coro), get_loop())
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


async def run_async(coro: Awaitable[T]) -> T:
    """Await ``coro`` on the background loop from any other event loop."""
    loop = get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_as_coroutine(coro), loop))


async def _as_coroutine(aw: Awaitable[T]) -> T:
    return await aw


_DONE = object()


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async iterator on the background loop, yielding its items.

    A pump task runs ahead on the loop and hands items over through a queue,
    so a long stream (a big ``map``) costs no thread hop per item.
    """
    if _loop_thread.in_loop_thread():
        raise InvalidError(
            "a blocking ketch iteration was started from ketch's own event loop; use .aio"
        )
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()

    async def pump() -> None:
        try:
            async for item in agen:
                items.put((True, item))
            items.put((True, _DONE))
        except BaseException as exc:  # handed to the consumer thread
            items.put((False, exc))

    future = asyncio.run_coroutine_threadsafe(pump(), get_loop())
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield _wrap(item)
    finally:
        if not future.done():
            future.cancel()
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                run_sync(aclose(), background=True)


async def iterate_async(agen: AsyncIterator[T]) -> AsyncIterator[T]:
    """Drive an async iterator on the background loop from another loop."""
    try:
        while True:
            try:
                item = await run_async(agen.__anext__())
            except StopAsyncIteration:
                return
            yield _wrap(item)
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await run_async(aclose())


class _ContextManager:
    """Both a sync and an async context manager over an async one."""

    def __init__(self, acm: Any) -> None:
        self._acm = acm

    def __enter__(self) -> Any:
        return _wrap(run_sync(self._acm.__aenter__(), background=True))

    def __exit__(self, *exc: Any) -> Any:
        return run_sync(self._acm.__aexit__(*exc), background=True)

    async def __aenter__(self) -> Any:
        return _wrap(await run_async(self._acm.__aenter__()))

    async def __aexit__(self, *exc: Any) -> Any:
        return await run_async(self._acm.__aexit__(*exc))


def context_manager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an impl method that returns an async context manager."""
    fn.__ketch_cm__ = True  # type: ignore[attr-defined]
    return fn


def translating(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a callable that an impl method returns (a decorator) for wrapping on the way out."""
    fn.__ketch_translate__ = True  # type: ignore[attr-defined]
    return fn


def _wrap(obj: Any) -> Any:
    if getattr(obj, "__ketch_translate__", False):
        inner = obj

        @functools.wraps(inner)
        def translated(*a: Any, **k: Any) -> Any:
            a, k = _unwrap_args(a, k)
            return _wrap(inner(*a, **k))

        return translated
    wrapper_cls = _IMPL_TO_WRAPPER.get(type(obj))
    if wrapper_cls is not None:
        return wrapper_cls._from_impl(obj)  # type: ignore[attr-defined]
    if type(obj) in (list, tuple):
        return type(obj)(_wrap(x) for x in obj)
    if type(obj) is dict and obj and type(next(iter(obj.values()))) in _IMPL_TO_WRAPPER:
        # A table of ketch's own objects (``app.registered_functions``), never a user's
        # dict (a result is returned as it is, not copied).
        return {k: _wrap(v) for k, v in obj.items()}
    return obj


def _unwrap(obj: Any) -> Any:
    impl = getattr(obj, "_ketch_impl", None)
    if impl is not None and type(obj) in _IMPL_TO_WRAPPER.values():
        return impl
    if type(obj) in (list, tuple):
        return type(obj)(_unwrap(x) for x in obj)
    return obj


def _unwrap_args(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return tuple(_unwrap(a) for a in args), {k: _unwrap(v) for k, v in kwargs.items()}


class _BoundAio:
    """What ``obj.method`` is: call it to block, or use ``.aio`` to await."""

    __slots__ = ("_call", "_aio", "__wrapped__")

    def __init__(self, call: Callable[..., Any], aio: Callable[..., Any], wrapped: Any) -> None:
        self._call = call
        self._aio = aio
        self.__wrapped__ = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    @property
    def aio(self) -> Callable[..., Any]:
        return self._aio


def _make_blocking(fn: Callable[..., Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(blocking, async) versions of an impl callable taking impl arguments."""
    if getattr(fn, "__ketch_cm__", False):

        def cm(*a: Any, **k: Any) -> Any:
            a, k = _unwrap_args(a, k)
            return _ContextManager(fn(*a, **k))

        return cm, cm
    if inspect.isasyncgenfunction(fn):

        def gen(*a: Any, **k: Any) -> Iterator[Any]:
            a, k = _unwrap_args(a, k)
            return iterate_sync(fn(*a, **k))

        def agen(*a: Any, **k: Any) -> AsyncIterator[Any]:
            a, k = _unwrap_args(a, k)
            return iterate_async(fn(*a, **k))

        return gen, agen
    if inspect.iscoroutinefunction(fn):

        def blocking(*a: Any, **k: Any) -> Any:
            a, k = _unwrap_args(a, k)
            return _wrap(run_sync(fn(*a, **k)))

        async def aio(*a: Any, **k: Any) -> Any:
            a, k = _unwrap_args(a, k)
            return _wrap(await run_async(fn(*a, **k)))

        return blocking, aio

    def plain(*a: Any, **k: Any) -> Any:
        a, k = _unwrap_args(a, k)
        return _wrap(fn(*a, **k))

    return plain, plain


class _MethodDescriptor:
    def __init__(self, name: str, raw: Any, kind: str) -> None:
        self.name = name
        self.raw = raw
        self.kind = kind  # "method" | "classmethod" | "staticmethod"
        self.__doc__ = getattr(raw, "__doc__", None)

    def __get__(self, obj: Any, owner: type) -> Any:
        if self.kind == "staticmethod":
            target = self.raw
        elif self.kind == "classmethod":
            target = functools.partial(self.raw, owner._ketch_impl_cls)  # type: ignore[attr-defined]
        else:
            if obj is None:
                return self
            target = functools.partial(self.raw, obj._ketch_impl)
        raw = self.raw
        is_cm = getattr(raw, "__ketch_cm__", False)
        bound: Any
        if is_cm or inspect.isasyncgenfunction(raw) or inspect.iscoroutinefunction(raw):
            blocking, aio = _make_blocking(_bound_like(raw, target))
            bound = blocking if is_cm else _BoundAio(blocking, aio, raw)
        else:

            def bound(*a: Any, **k: Any) -> Any:
                a, k = _unwrap_args(a, k)
                return _wrap(target(*a, **k))

        if self.kind == "method":
            obj.__dict__[self.name] = bound  # made once per object: later lookups find it first
        return bound


def _bound_like(raw: Any, target: Callable[..., Any]) -> Callable[..., Any]:
    """A callable with ``raw``'s kind (async, async gen, cm) that calls ``target``."""
    if getattr(raw, "__ketch_cm__", False):

        def cm(*a: Any, **k: Any) -> Any:
            return target(*a, **k)

        cm.__ketch_cm__ = True  # type: ignore[attr-defined]
        return cm
    if inspect.isasyncgenfunction(raw):

        async def agen(*a: Any, **k: Any) -> AsyncIterator[Any]:
            async for item in target(*a, **k):
                yield item

        return agen

    async def coro(*a: Any, **k: Any) -> Any:
        return await target(*a, **k)

    return coro


class _PropertyWrapper:
    def __init__(self, prop: property) -> None:
        self.prop = prop
        self.__doc__ = prop.__doc__

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        return _wrap(self.prop.__get__(obj._ketch_impl, type(obj._ketch_impl)))

    def __set__(self, obj: Any, value: Any) -> None:
        if self.prop.fset is None:
            raise AttributeError("can't set attribute")
        self.prop.__set__(obj._ketch_impl, _unwrap(value))


_PASSTHROUGH_DUNDERS = (
    "__call__",
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "__len__",
    "__contains__",
    "__iter__",
    "__getattr__",
    "__reduce__",
)


def synchronize_api(impl_cls: type, name: str | None = None, *, generic: bool = False) -> type:
    """Generate the public blocking class for the async class ``impl_cls``.

    ``generic``: the stub type checkers see is generic (``Function[P, R]``), so
    the class takes subscripts at run time too, as annotations evaluated then do.
    """
    public_name = name or impl_cls.__name__.lstrip("_")
    namespace: dict[str, Any] = {
        "__doc__": impl_cls.__doc__,
        "__module__": impl_cls.__module__,
        "__slots__": ("_ketch_impl", "__weakref__", "__dict__"),
        "_ketch_impl_cls": impl_cls,
    }
    if generic:
        namespace["__class_getitem__"] = classmethod(types.GenericAlias)
    namespace.update(_blocking_members(impl_cls))

    def _from_impl(cls: type, impl: Any) -> Any:
        cached = getattr(impl, "_ketch_wrapper", None)
        if cached is not None:
            return cached
        obj: Any = object.__new__(cls)
        object.__setattr__(obj, "_ketch_impl", impl)
        try:
            impl._ketch_wrapper = obj
        except AttributeError:
            pass
        return obj

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        args, kwargs = _unwrap_args(args, kwargs)
        impl = impl_cls(*args, **kwargs)
        object.__setattr__(self, "_ketch_impl", impl)
        impl._ketch_wrapper = self

    def __repr__(self: Any) -> str:
        return repr(self._ketch_impl).replace(impl_cls.__name__, public_name, 1)

    namespace["_from_impl"] = classmethod(_from_impl)
    namespace["__init__"] = __init__
    namespace["__repr__"] = __repr__
    wrapper = type(public_name, (), namespace)
    wrapper.__qualname__ = public_name
    _IMPL_TO_WRAPPER[impl_cls] = wrapper
    return wrapper


def _blocking_members(impl_cls: type) -> dict[str, Any]:
    """The blocking counterpart of each public member of ``impl_cls`` and its bases, by name.

    Bases go first, so that a subclass's member replaces the one it overrides.
    """
    members: dict[str, Any] = {}
    for klass in reversed(impl_cls.__mro__[:-1]):
        for attr_name, attr in vars(klass).items():
            if attr_name.startswith("_") and attr_name not in _PASSTHROUGH_DUNDERS:
                continue
            member = _blocking_member(attr_name, attr)
            if member is not None:  # other class attributes (constants, slots) stay behind
                members[attr_name] = member
    return members


def _blocking_member(attr_name: str, attr: Any) -> Any | None:
    """The blocking wrapper of one class attribute, or None for one that is not wrapped."""
    if isinstance(attr, property):
        return _PropertyWrapper(attr)
    if isinstance(attr, staticmethod):
        return _MethodDescriptor(attr_name, attr.__func__, "staticmethod")
    if isinstance(attr, classmethod):
        return _MethodDescriptor(attr_name, attr.__func__, "classmethod")
    if not inspect.isfunction(attr):
        return None
    if attr_name in _PASSTHROUGH_DUNDERS:
        return _dunder(attr)
    return _MethodDescriptor(attr_name, attr, "method")


def _dunder(raw: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(raw):

        def blocking(self: Any, *a: Any, **k: Any) -> Any:
            a, k = _unwrap_args(a, k)
            return _wrap(run_sync(raw(self._ketch_impl, *a, **k)))

        return blocking

    def plain(self: Any, *a: Any, **k: Any) -> Any:
        a, k = _unwrap_args(a, k)
        return _wrap(raw(self._ketch_impl, *a, **k))

    return plain


# -- what type checkers see ----------------------------------------------------
# ``synchronize_api`` returns a class built at run time, which type checkers
# cannot follow, so each public class is also written out once, as a stub
# under ``TYPE_CHECKING`` beside its implementation (``Function`` in
# functions.py, ``App`` in app.py). The helpers below let such a stub state a
# method's blocking signature once and get its ``.aio`` twin from it. None of
# this exists at run time, so calls cost nothing more.
if TYPE_CHECKING:
    P = ParamSpec("P")
    R = TypeVar("R")
    R_co = TypeVar("R_co", covariant=True)
    S = TypeVar("S")

    class AioMethod(Protocol[P, R_co]):
        """A blocking method; ``.aio`` makes the same call from async code."""

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
        def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    class AioIterator(Protocol[P, R_co]):
        """A method that streams results; ``.aio`` streams them to async code."""

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Generator[R_co, None, None]: ...
        def aio(self, *args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[R_co, None]: ...

    class _AioMethodDescriptor(Generic[S, P, R]):
        def __get__(self, obj: S, owner: Any, /) -> AioMethod[P, R]: ...

    class _AioIteratorDescriptor(Generic[S, P, R]):
        def __get__(self, obj: S, owner: Any, /) -> AioIterator[P, R]: ...

    def aio_method(fn: Callable[Concatenate[S, P], R], /) -> _AioMethodDescriptor[S, P, R]:
        """Stub decorator: the blocking method ``fn`` gains its ``.aio`` twin."""

    def aio_iterator(
        fn: Callable[Concatenate[S, P], Iterator[R]], /
    ) -> _AioIteratorDescriptor[S, P, R]:
        """Stub decorator: the generator method ``fn`` gains its async-generator ``.aio``."""

    class BlockingContextManager(Protocol[R_co]):
        """What an ``@context_manager`` method returns: use it with ``with`` or ``async with``."""

        def __enter__(self) -> R_co: ...
        def __exit__(self, *exc: object) -> bool | None: ...
        async def __aenter__(self) -> R_co: ...
        async def __aexit__(self, *exc: object) -> bool | None: ...
