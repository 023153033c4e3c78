"""Functions and function calls.

``_Function`` and ``_FunctionCall`` are the async implementation; ``Function``
and ``FunctionCall`` are the generated blocking API with ``.aio`` variants.

Example::

    @app.function()
    def square(x: int) -> int:
        return x * x

    square.remote(3)                  # 9, in a container
    list(square.map(range(4)))        # [0, 1, 4, 9]
    call = square.spawn(5); call.get()
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _sync
from ._client import _Client
from ._ids import new_id
from ._serialization import (
    MAX_INLINE_BYTES,
    deserialize,
    deserialize_exception,
    serialize,
)
from ._spec import FunctionSpec
from ._web import endpoint_name
from .exception import CallCancelledError, CallTimeoutError, ExecutionError, InvalidError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Coroutine, Generator, Iterator
    from typing import ClassVar, Generic, Literal, ParamSpec, Protocol, overload

    from typing_extensions import TypeVar  # a default (PEP 696) needs 3.13's typing

    from .app import _App

# Whether this process may trace its calls (OpenTelemetry): read once.
_TRACING = [bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))]
MAP_BATCH = 1000
MAP_BATCH_BYTES = 16 << 20  # a batch of inputs stays well under the control plane's request cap
POLL_S = 50.0
ERROR_STATUSES = ("failure", "timeout", "crash", "init_failure", "cancelled")


async def _encode_input(client: _Client, idx: int, data: bytes) -> dict[str, Any]:
    if len(data) > MAX_INLINE_BYTES:
        return {"idx": idx, "blob_id": await client.put_blob(data)}
    return {"idx": idx, "args": data}


async def _decode_output(client: _Client, out: dict[str, Any]) -> Any:
    """The value of a success; the exception object of any other status."""
    data = out.get("data")
    if data is None and out.get("blob_id"):
        data = await client.get_blob(out["blob_id"])
    status = out["status"]
    if status in ("success", "item"):
        return deserialize(data) if data is not None else None
    if data is None:
        return (
            CallCancelledError("the call was cancelled")
            if status == "cancelled"
            else ExecutionError(status)
        )
    return deserialize_exception(data)


def _is_error(out: dict[str, Any]) -> bool:
    return out["status"] in ERROR_STATUSES


@dataclass(frozen=True)
class FunctionStats:
    """What ``Function.get_current_stats()`` returns (Modal's fields)."""

    backlog: int  # inputs waiting for a container
    num_total_runners: int  # containers up or starting


class _Function:
    """A function that runs in ketch containers."""

    def __init__(
        self,
        app: _App | None,
        spec: FunctionSpec,
        raw_f: Callable[..., Any] | None,
        *,
        params: bytes | None = None,
        method: str | None = None,
        lookup: tuple[str, str] | None = None,
        parent: _Function | None = None,
    ) -> None:
        self._app = app
        self._spec = spec
        self._raw_f = raw_f
        self._params = params
        self._method = method
        self._lookup = lookup
        self._parent = parent
        self._object_id: str | None = None
        self._local_instance: Any = None
        self._local_owner: type | None = None
        self._secrets: list[
            Any
        ] = []  # ketch.Secret handles; put into the spec when the app is created
        self._volumes: dict[str, Any] = {}  # mount path -> ketch.Volume handle; the same
        self._web_urls: dict[str, str] = {}  # endpoint (tag, or tag.method) -> URL, once known
        # A ``with_options`` variant: the handle it derives from and what it changes.
        self._base: _Function | None = None
        self._overrides: dict[str, Any] = {}
        self._override_secrets: list[Any] | None = None
        self._override_volumes: dict[str, Any] | None = None
        self._signature = _signature_of(raw_f, bound_method=method is not None)
        self._checker: Any = None  # _typecheck.ArgChecker, False (none), or None (not made yet)

    def __repr__(self) -> str:
        return f"_Function({self._spec.tag!r}{'.' + self._method if self._method else ''})"

    # -- identity ------------------------------------------------------------
    @property
    def object_id(self) -> str | None:
        """The id of the function once its app runs or is deployed (``fu-…``)."""
        return self._parent.object_id if self._parent is not None else self._object_id

    @property
    def tag(self) -> str:
        return self._spec.tag

    def get_raw_f(self) -> Callable[..., Any] | None:
        """The undecorated Python function."""
        return self._raw_f

    @classmethod
    def from_name(cls, app_name: str, name: str) -> _Function:
        """A handle to a function of a deployed app, looked up on first use.

        Example: ``ketch.Function.from_name("my-app", "square").remote(3)``
        """
        spec = FunctionSpec(tag=name, module_name="", qualname=name)
        return cls(None, spec, None, lookup=(app_name, name))

    async def hydrate(self) -> _Function:
        """Look the function up now (``from_name`` handles are otherwise lazy)."""
        await self._resolve()
        return self

    async def _resolve(self) -> str:
        if self._parent is not None:
            return await self._parent._resolve()
        if self._object_id is not None:
            return self._object_id
        if self._base is not None:
            self._object_id = await self._bind_options()
            return self._object_id
        if self._lookup is not None:
            client = await _Client.get()
            reply = await client.rpc(
                "FunctionLookup", {"app_name": self._lookup[0], "tag": self._lookup[1]}
            )
            self._spec = FunctionSpec.from_wire(reply["spec"])
            if self._spec.signature and self._raw_f is None:
                self._signature = deserialize(self._spec.signature)
            self._object_id = reply["function_id"]
            self._web_urls = {
                k: v for k, v in reply.get("web_urls", {}).items() if k.split(".")[0] == self.tag
            }
            return self._object_id
        raise InvalidError(
            f"{self._spec.tag} is not running: call it inside `with app.run():`, from `ketch run`, "
            "or look up a deployed app with Function.from_name"
        )

    async def get_web_url(self) -> str | None:
        """The URL of this web endpoint (None if it is not one), once its app runs or is deployed.

        Example: ``requests.get(hello.get_web_url(), params={"name": "x"})``
        """
        base = self._parent or self
        if base._object_id is None and base._lookup is not None:
            await base._resolve()
        return base._web_urls.get(endpoint_name(self.tag, self._method))

    # -- options -------------------------------------------------------------
    def with_options(
        self,
        *,
        cpu: Any = None,
        memory: Any = None,
        gpu: Any = None,
        env: dict[str, str] | None = None,
        secrets: Any = None,
        volumes: Any = None,
        retries: Any = None,
        timeout: Any = None,
        max_containers: Any = None,
        buffer_containers: Any = None,
        scaledown_window: Any = None,
        region: Any = None,
        cloud: Any = None,
    ) -> _Function:
        """This function with some options changed: its own containers, the same code.

        Secrets and Volumes given replace the function's; ``env`` adds to its own.
        Example: ``big = embed.with_options(gpu="A100", timeout=600); big.remote(x)``
        """
        from ._variants import option_set

        fields, secret_list, volume_map = option_set(
            cpu=cpu,
            memory=memory,
            gpu=gpu,
            env=env,
            secrets=secrets,
            volumes=volumes,
            retries=retries,
            timeout=timeout,
            max_containers=max_containers,
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
            region=region,
            cloud=cloud,
        )
        return self._variant(fields, secret_list, volume_map)

    def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> _Function:
        """This function taking up to ``max_inputs`` inputs at once per container
        (``@ketch.concurrent``'s options), in containers of its own."""
        from .partial import concurrent

        concurrent(max_inputs=max_inputs, target_inputs=target_inputs)  # checks them
        fields = {
            "max_inputs": max_inputs,
            "target_inputs": target_inputs,
            "batch_max_size": 0,
            "batch_wait_ms": 0,
        }
        return self._variant(fields, None, None)

    def with_batching(self, *, max_batch_size: int, wait_ms: int) -> _Function:
        """This function taking its inputs in batches (``@ketch.batched``'s options), in
        containers of its own; the function must take and return lists."""
        from .partial import batched

        batched(max_batch_size=max_batch_size, wait_ms=wait_ms)  # checks them
        fields = {
            "batch_max_size": max_batch_size,
            "batch_wait_ms": wait_ms,
            "max_inputs": 1,
            "target_inputs": None,
        }
        return self._variant(fields, None, None)

    def _variant(
        self, fields: dict[str, Any], secrets: list[Any] | None, volumes: dict[str, Any] | None
    ) -> _Function:
        variant = _Function(self._app, self._spec, self._raw_f, params=self._params)
        variant._local_owner = self._local_owner
        variant._base = self
        variant._overrides = {**self._overrides, **fields}
        if "env" in self._overrides and "env" in fields:
            variant._overrides["env"] = {**self._overrides["env"], **fields["env"]}
        variant._override_secrets = secrets if secrets is not None else self._override_secrets
        variant._override_volumes = volumes if volumes is not None else self._override_volumes
        return variant

    async def _bind_options(self) -> str:
        """The variant's id: the base's, with this handle's options bound on the control plane."""
        from .app import secret_entries, volume_entries

        assert self._base is not None
        base_id = await self._base._resolve()
        self._spec = self._base._spec
        if self._signature is None:
            self._signature = self._base._signature
        options = dict(self._overrides)
        client = await _Client.get()
        if self._override_secrets is not None:
            options["secrets"] = await secret_entries(client, self._override_secrets)
        if self._override_volumes is not None:
            options["volumes"] = await volume_entries(self._override_volumes)
        reply = await client.rpc(
            "FunctionBindOptions", {"function_id": base_id, "options": options}
        )
        return str(reply["function_id"])

    async def update_autoscaler(
        self,
        *,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
    ) -> None:
        """Change how this function scales, now, for its running app; a deploy puts the
        decorator's settings back (as in Modal).

        Example: ``ketch.Function.from_name("app", "f").update_autoscaler(min_containers=2)``
        """
        from ._spec import option_fields

        settings = option_fields(
            min_containers=min_containers,
            max_containers=max_containers,
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
        )
        function_id = await self._resolve()
        client = await _Client.get()
        await client.rpc(
            "FunctionUpdateAutoscaler", {"function_id": function_id, "settings": settings}
        )

    async def get_current_stats(self) -> FunctionStats:
        """How many inputs wait for a container, and how many containers are up or starting.

        Example: ``if f.get_current_stats().backlog > 100: ...``
        """
        function_id = await self._resolve()
        client = await _Client.get()
        reply = await client.rpc("FunctionGetCurrentStats", {"function_id": function_id})
        return FunctionStats(int(reply["backlog"]), int(reply["num_total_runners"]))

    # -- arguments -----------------------------------------------------------
    def _encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        if self._signature is not None:
            try:
                bound = self._signature.bind(*((None,) if self._method else ()), *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self._display()}(): {exc}") from None
            checker = self._checker
            if checker is None:
                checker = self._checker = self._make_checker()
            if checker is not False:
                checker.check(self._display(), bound.arguments)
        return serialize((args, kwargs), f"an argument of {self._display()}")

    def _make_checker(self) -> Any:
        """The argument checker of this function's type hints (``_typecheck``), or False."""
        from ._typecheck import checker_for

        if not self._spec.validate_args:
            return False
        batched = self._spec.batch_max_size > 0
        return checker_for(self._raw_f, self._method is not None, batched) or False

    def _display(self) -> str:
        return f"{self._spec.tag}.{self._method}" if self._method else self._spec.tag

    def _call_body(self, function_id: str, kind: str) -> dict[str, Any]:
        body = {
            "call_id": new_id("fc"),
            "function_id": function_id,
            "kind": kind,
            "params": self._params,
            "method": self._method,
        }
        if _TRACING[0]:  # the caller's OpenTelemetry span, continued by the call's trace
            from .server.tracing import client_traceparent

            traceparent = client_traceparent()
            if traceparent:
                body["traceparent"] = traceparent
        return body

    def _check_generator(self, want: bool) -> None:
        is_gen = self._is_generator()
        if is_gen and not want:
            raise InvalidError(
                f"{self._display()} is a generator: use .remote_gen() to iterate its results"
            )
        if want and not is_gen:
            raise InvalidError(f"{self._display()} is not a generator: use .remote()")

    def _is_generator(self) -> bool:
        if self._method is not None:
            info = self._spec.methods.get(self._method, {})
            return bool(info.get("is_generator"))
        return self._spec.is_generator

    # -- single calls --------------------------------------------------------
    async def _start(
        self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], wait: float
    ) -> dict[str, Any]:
        function_id = await self._resolve()
        data = self._encode_args(args, kwargs)
        client = await _Client.get()
        body = self._call_body(function_id, kind)
        body.update(inputs=[await _encode_input(client, 0, data)], closed=True, wait=wait)
        return await client.rpc("CallCreate", body, timeout=wait + 60)

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function once in a container and return its result."""
        function_id = await self._resolve()
        self._check_generator(False)
        reply = await self._start("single", args, kwargs, POLL_S)
        call = _FunctionCall(reply["call_id"], function_id)
        outputs = [o for o in reply["outputs"] if o["status"] != "item"]
        if outputs:
            return await call._value(outputs[0])
        return await call.get()

    async def remote_gen(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Run a generator function in a container, yielding its items as they come."""
        await self._resolve()
        self._check_generator(True)
        reply = await self._start("gen", args, kwargs, 0)
        client = await _Client.get()
        after = 0
        next_index = 0  # a retried generator starts again from 0: skip what was already yielded
        while True:
            got = await client.rpc(
                "CallGetOutputs", {"call_id": reply["call_id"], "after": after, "timeout": POLL_S}
            )
            for out in got["outputs"]:
                after = out["seq"]
                if out["status"] == "item" and (out.get("gen_index") or 0) < next_index:
                    continue
                value = await _decode_output(client, out)
                if _is_error(out):
                    raise value
                if out["status"] != "item":
                    return
                next_index += 1
                yield value

    async def spawn(self, *args: Any, **kwargs: Any) -> _FunctionCall:
        """Start the function and return a handle to its result at once."""
        function_id = await self._resolve()
        self._check_generator(False)
        reply = await self._start("spawn", args, kwargs, 0)
        return _FunctionCall(reply["call_id"], function_id)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here, in this process."""
        if self._raw_f is None:
            raise InvalidError(f"{self._display()} has no local code (it came from from_name)")
        if self._method is None:
            return self._raw_f(*args, **kwargs)
        if self._local_instance is None:
            self._local_instance = self._make_local_instance()
        return getattr(self._local_instance, self._method)(*args, **kwargs)

    def _make_local_instance(self) -> Any:
        from .cls import make_local_instance

        assert self._parent is not None
        return make_local_instance(self._parent, self._params)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.local(*args, **kwargs)

    # -- many calls ----------------------------------------------------------
    async def _send_inputs(
        self, call_body: dict[str, Any], arg_iter: Any, sent: asyncio.Event
    ) -> int:
        client = await _Client.get()
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        idx = 0
        created = False

        async def flush(final: bool) -> None:
            nonlocal batch, batch_bytes, created
            if not created:
                await client.rpc(
                    "CallCreate", {**call_body, "inputs": batch, "closed": final, "wait": 0}
                )
                created = True
                sent.set()
            else:
                await client.rpc(
                    "CallPutInputs",
                    {
                        "call_id": call_body["call_id"],
                        "inputs": batch,
                        "n_inputs": idx if final else None,
                    },
                )
            batch, batch_bytes = [], 0

        async for args, kwargs in _aiter_args(arg_iter):
            data = self._encode_args(args, kwargs)
            batch.append(await _encode_input(client, idx, data))
            batch_bytes += len(batch[-1].get("args") or b"")
            idx += 1
            if len(batch) >= MAP_BATCH or batch_bytes >= MAP_BATCH_BYTES:
                await flush(False)
        await flush(True)
        return idx

    async def _map_stream(
        self, arg_iter: Any, order_outputs: bool, return_exceptions: bool
    ) -> AsyncIterator[Any]:
        function_id = await self._resolve()
        self._check_generator(False)
        client = await _Client.get()
        body = self._call_body(function_id, "map")
        created = asyncio.Event()
        sender = asyncio.create_task(self._send_inputs(body, arg_iter, created))
        waiter = asyncio.create_task(created.wait())
        await asyncio.wait([sender, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if sender.done() and sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]
        finished = False
        try:
            after, received, next_idx = 0, 0, 0
            held: dict[int, Any] = {}
            while True:
                if sender.done():
                    if sender.exception() is not None:
                        raise sender.exception()  # type: ignore[misc]
                    if received >= sender.result():
                        break
                got = await client.rpc(
                    "CallGetOutputs",
                    {
                        "call_id": body["call_id"],
                        "after": after,
                        "timeout": 0.5 if not sender.done() else POLL_S,
                    },
                )
                for out in got["outputs"]:
                    after = out["seq"]
                    if out["status"] == "item":
                        continue
                    received += 1
                    value = await _decode_output(client, out)
                    if _is_error(out) and not return_exceptions:
                        raise value
                    if not order_outputs:
                        yield value
                        continue
                    held[out["idx"]] = value
                    while next_idx in held:
                        yield held.pop(next_idx)
                        next_idx += 1
            finished = True
        finally:
            if not finished:
                sender.cancel()
                await _cancel_quietly(client, body["call_id"])

    async def map(
        self,
        *input_iterators: Iterable[Any] | AsyncIterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """Run the function over the zipped iterables, in parallel containers.

        Results come in input order (``order_outputs=False``: as they finish).
        With ``return_exceptions=True`` a failed input yields its exception.
        """
        if not input_iterators:
            raise InvalidError("map() needs at least one iterable of inputs")
        args_iter = _zip_inputs(input_iterators, kwargs or {})
        async for value in self._map_stream(args_iter, order_outputs, return_exceptions):
            yield value

    async def starmap(
        self,
        input_iterator: Iterable[Any] | AsyncIterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """Like ``map``, with each input a tuple of positional arguments."""
        args_iter = _star_inputs(input_iterator, kwargs or {})
        async for value in self._map_stream(args_iter, order_outputs, return_exceptions):
            yield value

    async def for_each(
        self,
        *input_iterators: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        ignore_exceptions: bool = False,
    ) -> None:
        """Run the function over the inputs for its side effects, discarding results."""
        args_iter = _zip_inputs(input_iterators, kwargs or {})
        async for _ in self._map_stream(args_iter, False, ignore_exceptions):
            pass

    async def spawn_map(
        self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] | None = None
    ) -> _FunctionCall:
        """Queue the function over the inputs and return at once; ``.get()`` gives the list of results."""
        function_id = await self._resolve()
        body = self._call_body(function_id, "spawn_map")
        await self._send_inputs(body, _zip_inputs(input_iterators, kwargs or {}), asyncio.Event())
        return _FunctionCall(body["call_id"], function_id)


class _FunctionCall:
    """A handle to a running or finished call, usable from any process by its id."""

    def __init__(self, call_id: str, function_id: str | None = None) -> None:
        self._call_id = call_id
        self._function_id = function_id

    def __repr__(self) -> str:
        return f"_FunctionCall({self._call_id!r})"

    @property
    def object_id(self) -> str:
        """The call's id (``fc-…``); ``FunctionCall.from_id`` takes it back."""
        return self._call_id

    @classmethod
    def from_id(cls, function_call_id: str) -> _FunctionCall:
        """A handle to the call with this id, for example one spawned by another process."""
        return cls(function_call_id)

    async def _value(self, out: dict[str, Any]) -> Any:
        client = await _Client.get()
        value = await _decode_output(client, out)
        if _is_error(out):
            raise value
        return value

    async def get(self, timeout: float | None = None) -> Any:
        """Wait for the result (a list of results for ``spawn_map``) and return it.

        Raises the call's exception if it failed, and ``CallTimeoutError`` (a
        ``TimeoutError``) if ``timeout`` seconds pass first.
        """
        client = await _Client.get()
        deadline = None if timeout is None else time.monotonic() + timeout
        after = 0
        finals: dict[int, dict[str, Any]] = {}
        while True:
            wait = (
                POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            )
            got = await client.rpc(
                "CallGetOutputs", {"call_id": self._call_id, "after": after, "timeout": wait}
            )
            for out in got["outputs"]:
                after = out["seq"]
                if out["status"] != "item":
                    finals[out["idx"]] = out
            n_inputs = got.get("n_inputs")
            if got["done"] and n_inputs is not None and len(finals) >= n_inputs:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise CallTimeoutError(
                    f"function call {self._call_id} did not finish within {timeout:g} s"
                )
        if got.get("kind") == "spawn_map":
            return [await self._value(finals[i]) for i in sorted(finals)]
        return await self._value(finals[min(finals)])

    async def cancel(self, terminate_containers: bool = False) -> None:
        """Cancel the call: queued inputs never run, running ones are interrupted."""
        client = await _Client.get()
        await client.rpc(
            "CallCancel", {"call_id": self._call_id, "terminate": terminate_containers}
        )

    @staticmethod
    async def gather(*function_calls: _FunctionCall) -> list[Any]:
        """Wait for several calls; results in the order given."""
        return list(await asyncio.gather(*(fc.get() for fc in function_calls)))


async def _cancel_quietly(client: _Client, call_id: str) -> None:
    try:
        await asyncio.shield(client.rpc("CallCancel", {"call_id": call_id}, timeout=10))
    except BaseException:  # best effort while unwinding
        pass


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _zip_inputs(
    iterables: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncIterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    iters = [_aiter(it).__aiter__() for it in iterables]
    while True:
        row = []
        for it in iters:
            try:
                row.append(await it.__anext__())
            except StopAsyncIteration:
                return
        yield tuple(row), kwargs


async def _star_inputs(
    items: Any, kwargs: dict[str, Any]
) -> AsyncIterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    async for row in _aiter(items):
        yield tuple(row), kwargs


async def _aiter_args(arg_iter: Any) -> AsyncIterator[Any]:
    async for item in arg_iter:
        yield item


def _signature_of(fn: Callable[..., Any] | None, bound_method: bool) -> inspect.Signature | None:
    if fn is None:
        return None
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


if TYPE_CHECKING:
    P = ParamSpec("P")
    R = TypeVar("R")
    R_co = TypeVar("R_co", covariant=True)
    L = TypeVar("L", default=R)  # what .local() returns: R, or for an async def a coroutine of R

    _Inputs = Iterable[Any] | AsyncIterable[Any]

    class Function(Generic[P, R, L]):
        """A function that runs in ketch containers: ``f.remote(...)``, ``f.map(...)``, ...

        ``P`` and ``R`` are the user function's parameters and result (of an
        ``async def``, the awaited result): ``f.remote(1)`` is checked against
        ``P`` and typed ``R``. Methods with ``.aio`` take the same arguments there.
        """

        _ketch_impl: _Function

        @property
        def object_id(self) -> str | None: ...
        @property
        def tag(self) -> str: ...
        def get_raw_f(self) -> Callable[..., Any] | None: ...
        @classmethod
        def from_name(cls, app_name: str, name: str) -> Function[..., Any]: ...

        # ``self, /``: the stub decorators take ``self`` as their first positional argument
        @_sync.aio_method
        def hydrate(self, /) -> Function[P, R, L]: ...
        @_sync.aio_method
        def get_web_url(self, /) -> str | None: ...
        @_sync.aio_method
        def get_current_stats(self, /) -> FunctionStats: ...
        def with_options(
            self,
            *,
            cpu: Any = None,
            memory: Any = None,
            gpu: Any = None,
            env: dict[str, str] | None = None,
            secrets: Any = None,
            volumes: Any = None,
            retries: Any = None,
            timeout: Any = None,
            max_containers: Any = None,
            buffer_containers: Any = None,
            scaledown_window: Any = None,
            region: Any = None,
            cloud: Any = None,
        ) -> Function[P, R, L]: ...
        def with_concurrency(
            self, *, max_inputs: int, target_inputs: int | None = None
        ) -> Function[P, R, L]: ...
        def with_batching(self, *, max_batch_size: int, wait_ms: int) -> Function[P, R, L]: ...
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
        @_sync.aio_method
        def remote(self, /, *args: P.args, **kwargs: P.kwargs) -> R: ...
        @_sync.aio_iterator
        def remote_gen(self, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Any]: ...
        @_sync.aio_method
        def spawn(self, /, *args: P.args, **kwargs: P.kwargs) -> FunctionCall[R]: ...
        def local(self, *args: P.args, **kwargs: P.kwargs) -> L: ...
        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> L: ...
        @property
        def map(self) -> _Map[R]: ...
        @property
        def starmap(self) -> _Starmap[R]: ...
        @_sync.aio_method
        def for_each(
            self,
            /,
            *input_iterators: _Inputs,
            kwargs: dict[str, Any] | None = None,
            ignore_exceptions: bool = False,
        ) -> None: ...
        @_sync.aio_method
        def spawn_map(
            self, /, *input_iterators: _Inputs, kwargs: dict[str, Any] | None = None
        ) -> FunctionCall[list[R]]: ...

    class _Map(Protocol[R_co]):
        """``f.map``: with ``return_exceptions=True`` a failed input yields its exception."""

        @overload
        def __call__(
            self,
            *input_iterators: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            return_exceptions: Literal[False] = False,
        ) -> Generator[R_co, None, None]: ...
        @overload
        def __call__(
            self,
            *input_iterators: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            return_exceptions: bool,
        ) -> Generator[R_co | BaseException, None, None]: ...
        @overload
        def aio(
            self,
            *input_iterators: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            return_exceptions: Literal[False] = False,
        ) -> AsyncGenerator[R_co, None]: ...
        @overload
        def aio(
            self,
            *input_iterators: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            return_exceptions: bool,
        ) -> AsyncGenerator[R_co | BaseException, None]: ...

    class _Starmap(Protocol[R_co]):
        """``f.starmap``: each input is a tuple of positional arguments."""

        @overload
        def __call__(
            self,
            input_iterator: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            return_exceptions: Literal[False] = False,
        ) -> Generator[R_co, None, None]: ...
        @overload
        def __call__(
            self,
            input_iterator: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            *,
            return_exceptions: bool,
        ) -> Generator[R_co | BaseException, None, None]: ...
        @overload
        def aio(
            self,
            input_iterator: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            return_exceptions: Literal[False] = False,
        ) -> AsyncGenerator[R_co, None]: ...
        @overload
        def aio(
            self,
            input_iterator: _Inputs,
            kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True,
            *,
            return_exceptions: bool,
        ) -> AsyncGenerator[R_co | BaseException, None]: ...

    class FunctionCall(Generic[R]):
        """A handle to a running or finished call; ``.get()`` returns its ``R``."""

        _ketch_impl: _FunctionCall

        @property
        def object_id(self) -> str: ...
        @classmethod
        def from_id(cls, function_call_id: str) -> FunctionCall[Any]: ...
        @_sync.aio_method
        def get(self, /, timeout: float | None = None) -> R: ...
        @_sync.aio_method
        def cancel(self, /, terminate_containers: bool = False) -> None: ...

        gather: ClassVar[_Gather]

    class _Gather(Protocol):
        def __call__(self, *function_calls: FunctionCall[Any]) -> list[Any]: ...
        def aio(self, *function_calls: FunctionCall[Any]) -> Coroutine[Any, Any, list[Any]]: ...

else:
    Function = _sync.synchronize_api(_Function, generic=True)
    FunctionCall = _sync.synchronize_api(_FunctionCall, generic=True)
