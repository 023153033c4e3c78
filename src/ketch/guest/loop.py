"""The container main loop: take inputs, run them, send outputs.

Threads, not asyncio, on this side: the main thread reads frames, worker
threads run sync user code (one per concurrent slot), an event loop thread
runs async user code, and a watchdog enforces timeouts. Outputs are sent as
soon as the local queue runs dry, and batched while it does not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import inspect
import logging
import os
import reprlib
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

from .. import _current
from .._serialization import serialize_exception, unpack
from .._spec import FunctionSpec
from .._traceback import user_frames
from .._wire import BlockingChannel, ChannelClosed
from ..exception import FunctionTimeoutError, InputCancellation, InvalidError
from . import interact
from .user_code import Service, build_service
from .web import WebHost

logger = logging.getLogger(__name__)

FLUSH_AFTER_S = 0.002
INLINE_BELOW_S = 0.002
FLUSH_AT = 128
PR_SET_PDEATHSIG = 1
# Commands sent to a function's container (ketch.guest.sandbox's messages).
AGENT_MESSAGES = frozenset({"exec", "stdin", "kill", "pause", "resume", "resize", "fs"})


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    parent = os.environ.get("KETCH_PARENT_PID")
    if parent and os.getppid() != int(parent):
        os._exit(1)


def _noted(exc: BaseException) -> BaseException:
    """``exc``, with a note naming the bound when it is the container's full disk."""
    bound = os.environ.get("KETCH_EPHEMERAL_DISK_MIB")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and bound:
        exc.add_note(
            f"ketch: the container's disk is full: its writable layer and /tmp are each bounded "
            f"by ephemeral_disk={bound} MiB (raise it with @app.function(ephemeral_disk=...))"
        )
    return exc


class _Running:
    __slots__ = ("input_id", "deadline", "thread_id", "task")

    def __init__(self, input_id: int, deadline: float, thread_id: int | None) -> None:
        self.input_id = input_id
        self.deadline = deadline
        self.thread_id = thread_id
        self.task: asyncio.Future[Any] | None = None


class ContainerLoop:
    def __init__(self, chan: BlockingChannel, service: Service, spec: FunctionSpec) -> None:
        self.chan = chan
        self.service = service
        self.spec = spec
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.cond = threading.Condition()
        self.outbox: list[dict[str, Any]] = []
        self.outbox_since = 0.0
        self.flush_soon = threading.Event()  # an output waits in the outbox (see _flusher)
        self.send_lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.running: dict[int, _Running] = {}
        self.cancelled: set[int] = set()
        self.stopping = False
        self.aloop: asyncio.AbstractEventLoop | None = None
        self.slots = max(spec.max_inputs, 1)
        self.sequential_sync = False  # set by start_threads
        self.fast = False  # every input so far ran in under INLINE_BELOW_S
        self.n_done = 0
        self.inline_left = 0  # inputs of the current inline batch not run yet
        self.web: WebHost | None = WebHost(self) if spec.web_methods() else None

    # -- outputs ---------------------------------------------------------------
    def emit(self, item: dict[str, Any], force: bool = False) -> None:
        with self.out_lock:
            first = not self.outbox
            if first:
                self.outbox_since = time.monotonic()
            self.outbox.append(item)
            urgent = (
                force or (not self.queue and not self.inline_left) or len(self.outbox) >= FLUSH_AT
            )
            urgent = urgent or time.monotonic() - self.outbox_since > FLUSH_AFTER_S
        if urgent:
            self.flush()
        elif first:
            self.flush_soon.set()

    def _flusher(self) -> None:
        """Send an output held back for batching after ``FLUSH_AFTER_S``, even when no other
        output follows it (the next input may take long: its result must not wait for it)."""
        while True:
            self.flush_soon.wait()
            self.flush_soon.clear()
            time.sleep(FLUSH_AFTER_S)
            self.flush()

    def flush(self) -> None:
        while True:
            with self.out_lock:
                if not self.outbox:
                    return
                batch, self.outbox = self.outbox, []
            with self.send_lock:
                self.chan.write({"t": "outputs", "items": batch})

    def _result(
        self, input_id: int, status: str, data: bytes | None, started: float
    ) -> dict[str, Any]:
        return {
            "id": input_id,
            "status": status,
            "data": data,
            "duration": time.monotonic() - started,
        }

    # -- running one input ---------------------------------------------------
    def _decode(self, item: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        fn = self.service.callables.get(item.get("method"))
        if fn is None:
            raise InvalidError(f"no method {item.get('method')!r} here")
        args, kwargs = cloudpickle.loads(item["args"])
        return fn, args, kwargs

    def _pack_result(
        self, input_id: int, value: Any, started: float, detail: dict[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            data = cloudpickle.dumps(value)
        except Exception as exc:
            err = InvalidError(
                f"the return value could not be serialized: {type(exc).__name__}: {exc}"
            )
            return self._failure(input_id, err, started, detail, printed=True)
        out = self._result(input_id, "success", data, started)
        if detail is not None:
            detail["result"] = _short_repr(value)
            out["detail"] = detail
        return out

    @staticmethod
    def _item(input_id: int, n: int, element: Any) -> dict[str, Any]:
        return {
            "id": input_id,
            "status": "item",
            "gen_index": n,
            "data": cloudpickle.dumps(element),
        }

    def _failure(
        self,
        input_id: int,
        exc: BaseException,
        started: float,
        detail: dict[str, str] | None = None,
        printed: bool = False,
    ) -> dict[str, Any]:
        if isinstance(exc, InputCancellation) or input_id in self.cancelled:
            return self._result(input_id, "cancelled", None, started)
        exc = _noted(exc.with_traceback(user_frames(exc.__traceback__)))
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if not printed:
            sys.stderr.write(text)
        out = self._result(input_id, "failure", serialize_exception(exc), started)
        out["detail"] = {**(detail or {}), "traceback": text, "error": _short_repr(exc)}
        return out

    def run_sync_input(self, item: dict[str, Any]) -> None:
        input_id = item["id"]
        started = time.monotonic()
        self.running[input_id] = _Running(
            input_id, started + self.spec.timeout, threading.get_ident()
        )
        _current.serve(input_id, item.get("call"))
        detail: dict[str, str] | None = None
        try:
            fn, args, kwargs = self._decode(item)
            if item.get("detail"):
                detail = {"args": _args_repr(args, kwargs)}
            value = fn(*args, **kwargs)
            if inspect.isgenerator(value):
                for n, element in enumerate(value):
                    self.emit(self._item(input_id, n, element), force=True)
                value = None
            out = self._pack_result(input_id, value, started, detail)
        except BaseException as exc:  # user code may raise anything, SystemExit included
            out = self._failure(input_id, exc, started, detail)
        finally:
            self.running.pop(input_id, None)
            _current.stop_serving()
        # Fast as long as every input so far was: one slow input ends inline running for good.
        self.fast = out["duration"] < INLINE_BELOW_S and (self.fast or self.n_done == 0)
        self.n_done += 1
        self.emit(out)

    async def run_async_input(self, item: dict[str, Any], sem: asyncio.Semaphore) -> None:
        input_id = item["id"]
        async with sem:
            started = time.monotonic()
            running = _Running(input_id, started + self.spec.timeout, None)
            running.task = asyncio.current_task()
            self.running[input_id] = running
            _current.serve(input_id, item.get("call"))  # (this task's own context)
            detail: dict[str, str] | None = None
            try:
                fn, args, kwargs = self._decode(item)
                if item.get("detail"):
                    detail = {"args": _args_repr(args, kwargs)}
                value = fn(*args, **kwargs)
                if inspect.isasyncgen(value):
                    n = 0
                    async for element in value:
                        self.emit(self._item(input_id, n, element), force=True)
                        n += 1
                    value = None
                elif inspect.isawaitable(value):
                    value = await value
                out = self._pack_result(input_id, value, started, detail)
            except (Exception, asyncio.CancelledError, InputCancellation) as exc:
                out = self._failure(input_id, exc, started, detail)
            finally:
                self.running.pop(input_id, None)
            self.emit(out)

    def run_batch(self, items: list[dict[str, Any]]) -> None:
        started = time.monotonic()
        for it in items:
            self.running[it["id"]] = _Running(
                it["id"], started + self.spec.timeout, threading.get_ident()
            )
        try:
            decoded = [self._decode(it) for it in items]
            fn = decoded[0][0]
            names = list(inspect.signature(fn).parameters)
            columns: dict[str, list[Any]] = {n: [] for n in names}
            for _, args, kwargs in decoded:
                bound = dict(zip(names, args, strict=False)) | kwargs
                for n in names:
                    columns[n].append(bound.get(n))
            values = fn(**columns)
            if inspect.isawaitable(values):
                values = asyncio.run(values)  # type: ignore[arg-type]
            if not isinstance(values, list) or len(values) != len(items):
                raise InvalidError(
                    f"a @batched function must return a list of {len(items)} results, got {type(values).__name__}"
                )
            outs = [
                self._pack_result(it["id"], v, started) for it, v in zip(items, values, strict=True)
            ]
        except BaseException as exc:
            outs = [self._failure(it["id"], exc, started) for it in items]
        finally:
            for it in items:
                self.running.pop(it["id"], None)
        for out in outs:
            self.emit(out)

    # -- threads -------------------------------------------------------------
    def _take(self, n: int = 1, wait_s: float = 0.0) -> list[dict[str, Any]]:
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait()
            if not self.queue:
                return []
            taken = [self.queue.popleft()]
            deadline = time.monotonic() + wait_s
            while len(taken) < n:
                if self.queue:
                    taken.append(self.queue.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    break
                self.cond.wait(left)
            return taken

    def sync_worker(self) -> None:
        while True:
            items = self._take()
            if not items:
                return
            self.run_sync_input(items[0])

    def batch_worker(self) -> None:
        size, wait_ms = self.spec.batch_max_size, self.spec.batch_wait_ms
        while True:
            items = self._take(size, wait_ms / 1000.0)
            if not items:
                return
            self.run_batch(items)

    def async_feeder(self) -> None:
        assert self.aloop is not None
        sem_holder: list[asyncio.Semaphore] = []

        async def make_sem() -> None:
            sem_holder.append(asyncio.Semaphore(self.slots))

        asyncio.run_coroutine_threadsafe(make_sem(), self.aloop).result()
        pending: set[Any] = set()
        while True:
            items = self._take()
            if not items:
                break
            fut = asyncio.run_coroutine_threadsafe(
                self.run_async_input(items[0], sem_holder[0]), self.aloop
            )
            pending.add(fut)
            pending = {f for f in pending if not f.done()}
        for fut in pending:
            fut.result()

    def watchdog(self) -> None:
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            for running in list(self.running.values()):
                if now > running.deadline:
                    self._timed_out(running)

    def _timed_out(self, running: _Running) -> None:
        err = FunctionTimeoutError(
            f"{self.spec.tag} timed out after {self.spec.timeout:g} s (timeout={self.spec.timeout:g}); "
            "its container was stopped"
        )
        out = {
            "id": running.input_id,
            "status": "timeout",
            "data": serialize_exception(err),
            "duration": self.spec.timeout,
        }
        sys.stderr.write(
            f"ketch: input timed out after {self.spec.timeout:g} s; stopping the container\n"
        )
        try:
            self.emit(out, force=True)
        finally:
            sys.stderr.flush()
            os._exit(124)

    def cancel(self, ids: list[int]) -> None:
        with self.cond:
            keep = collections.deque(it for it in self.queue if it["id"] not in ids)
            dropped = [it["id"] for it in self.queue if it["id"] in ids]
            self.queue = keep
        for input_id in dropped:
            self.emit({"id": input_id, "status": "cancelled", "data": None, "duration": 0.0})
        for input_id in ids:
            running = self.running.get(input_id)
            if running is None:
                continue
            self.cancelled.add(input_id)
            if running.task is not None and self.aloop is not None:
                self.aloop.call_soon_threadsafe(running.task.cancel)
            elif running.thread_id is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(running.thread_id), ctypes.py_object(InputCancellation)
                )

    # -- main ----------------------------------------------------------------
    def start_threads(self) -> list[threading.Thread]:
        threads = []
        fns = list(self.service.callables.values())
        is_async = any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in fns)
        if self.web is not None:  # requests run as tasks on an event loop, whatever the function is
            self.aloop = asyncio.new_event_loop()
            threading.Thread(
                target=_run_loop, args=(self.aloop,), name="user-loop", daemon=True
            ).start()
            targets = []
        elif self.spec.batch_max_size:
            targets = [self.batch_worker]
        elif is_async:
            self.aloop = asyncio.new_event_loop()
            threading.Thread(
                target=_run_loop, args=(self.aloop,), name="user-loop", daemon=True
            ).start()
            targets = [self.async_feeder]
        else:
            targets = [self.sync_worker] * self.slots
            self.sequential_sync = self.slots == 1
        for target in targets:
            t = threading.Thread(target=target, daemon=True)
            t.start()
            threads.append(t)
        threading.Thread(target=self.watchdog, name="watchdog", daemon=True).start()
        threading.Thread(target=self._flusher, name="flusher", daemon=True).start()
        return threads

    def control(self, msg: dict[str, Any]) -> None:
        """What every container does the same way: cancellations, tunnelled connections,
        and commands sent to it (``ketch container exec``), which the sandbox agent runs."""
        if msg.get("t") == "cancel":
            self.cancel(list(msg["ids"]))
        elif msg.get("t") == "tunnel":
            _tunnel_connection(msg)
        elif msg.get("t") in AGENT_MESSAGES:
            interact.agent().handle(msg)

    def serve(self) -> None:
        threads = self.start_threads()
        interact.serving()
        if self.web is not None:
            self._serve_web(threads)
            return
        self.chan.write({"t": "ready"})
        try:
            while True:
                msg = self.chan.read()
                kind = msg.get("t")
                if kind == "inputs":
                    if not self._run_inline(msg["items"]):
                        with self.cond:
                            self.queue.extend(msg["items"])
                            self.cond.notify_all()
                elif kind == "stop":
                    break
                else:
                    self.control(msg)
        except ChannelClosed:
            os._exit(1)  # the control plane is gone; nothing to report to
        self.shutdown(threads)

    def _serve_web(self, threads: list[threading.Thread]) -> None:
        """A web endpoint's container reads its channel on its event loop, where the requests
        run: no hand-off between threads per request."""
        assert self.aloop is not None and self.web is not None
        loop, web, sock = self.aloop, self.web, self.chan.sock
        ready, buffer = self.chan.pending()
        stopped = threading.Event()

        def handle(msg: dict[str, Any]) -> None:
            kind = msg.get("t")
            if kind == "inputs":
                web.start(msg["items"])
            elif kind == "web_in":
                web.deliver(msg)
            elif kind == "stop":
                loop.remove_reader(sock.fileno())
                stopped.set()
            else:
                self.control(msg)

        def readable() -> None:
            try:
                got = buffer.receive(
                    sock
                )  # the socket stays blocking: it is readable, so this returns now
            except OSError:
                got = 0
            if not got:
                os._exit(1)  # the control plane is gone; nothing to report to
            for msg in buffer.frames():
                handle(msg)

        def begin() -> None:
            for msg in ready:
                handle(msg)
            loop.add_reader(sock.fileno(), readable)

        loop.call_soon_threadsafe(begin)
        self.chan.write({"t": "ready"})
        stopped.wait()
        self.shutdown(threads)

    def _run_inline(self, items: list[dict[str, Any]]) -> bool:
        """Run a fast, sequential function's inputs on this thread: no hand-off to a worker.

        Only when nothing else runs or waits, so order and the single slot are
        kept; only for functions that have always been fast, so this thread is
        back to reading cancels and stops within milliseconds.
        """
        if not (self.sequential_sync and self.fast):
            return False
        with self.cond:
            if self.queue or self.running:
                return False
        for n, item in enumerate(items):
            self.inline_left = len(items) - n - 1
            self.run_sync_input(item)
        return True

    def shutdown(self, threads: list[threading.Thread]) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        for t in threads:
            t.join(timeout=self.spec.timeout)
        if self.web is not None and self.aloop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.web.shutdown(), self.aloop).result(15)
        self.flush()
        for hook in self.service.exit_hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    asyncio.run(result)  # type: ignore[arg-type]
            except Exception:
                traceback.print_exc()
        if interact.started():  # commands run in it go with it (in `local` too)
            interact.agent().stop()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Run the user's event loop for good, under one long-lived task, as ``asyncio.run`` would:
    libraries look for that root task (anyio ties its worker threads to it; without one, a
    FastAPI app would start and stop a thread for every request to a sync endpoint)."""

    async def forever() -> None:
        await asyncio.Event().wait()

    loop.run_until_complete(forever())


def _tunnel_connection(msg: dict[str, Any]) -> None:
    """One connection through a ``ketch.forward`` tunnel, on a thread of its own."""
    from .tunnel import open_connection

    threading.Thread(target=open_connection, args=(msg, _connect), daemon=True).start()


def _home_of_user() -> None:
    """An image's ``USER`` gets its own ``HOME``, as Docker gives it (the sandbox says /root)."""
    if os.getuid() == 0 or os.environ.get("HOME") not in (None, "/root"):
        return
    import pwd

    try:
        os.environ["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        os.environ["HOME"] = "/"


def _connect() -> BlockingChannel:
    address = os.environ["KETCH_CHANNEL"]
    if address.startswith("unix:"):  # sandbox containers: a socket bound into the container
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[len("unix:") :])
        return BlockingChannel(sock)
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return BlockingChannel(sock)


def main() -> None:
    from .mounts import apply_volume_mounts

    if os.environ.get("KETCH_SANDBOX"):  # a sandbox: its first process runs commands instead
        from .sandbox import main as sandbox_main

        sandbox_main()
        return
    _die_with_parent()
    _home_of_user()
    if os.environ.get("KETCH_RUNTIME") == "sandbox":
        from .landlock import confine_container

        confine_container()  # what the kernel lacks is told by `ketch server status`
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    chan = _connect()
    chan.write(
        {
            "t": "hello",
            "container_id": os.environ["KETCH_CONTAINER_ID"],
            "token": os.environ["KETCH_CONTAINER_TOKEN"],
        }
    )
    init = chan.read()
    interact.install(chan)
    spec = FunctionSpec.from_wire(init["spec"])
    os.environ["KETCH_APP_ID"] = init["app_id"]
    try:
        apply_volume_mounts()
        params = unpack(init["params"]) if init.get("params") else None
        service = build_service(spec, params, init["app_id"], init["function_ids"])
    except BaseException as exc:
        exc = _noted(exc.with_traceback(user_frames(exc.__traceback__)))
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        chan.write({"t": "init_failed", "error": serialize_exception(exc)})
        sys.stderr.flush()
        os._exit(1)
    ContainerLoop(chan, service, spec).serve()


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 200, 200, 100
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 20
_REPR.maxlevel = 4


def _short_repr(value: Any) -> str:
    """A bounded repr, made here in the container (``ketch call show`` prints it)."""
    try:
        return _REPR.repr(value)
    except Exception as exc:  # a user's __repr__ may raise
        return f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"


def _args_repr(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [_short_repr(a) for a in args] + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)
