"""Serving a web endpoint inside its container: an ASGI server over the channel.

The gateway sends each HTTP request as an input carrying its ASGI scope and
body; this module runs the endpoint's app on the container's event loop and
sends the response back as ``web`` events (``start``, then ``body`` chunks,
each sent as soon as the app produces it), then the input's output.

- ``fastapi_endpoint``: the function becomes the one route (``/``) of a
  FastAPI app, with CORS open to every origin, as Modal does.
- ``asgi_app``: the function returns the app, called once per container.
- ``wsgi_app``: the function returns a WSGI app, run in a thread pool
  behind a small adapter (PEP 3333); its body iterable is streamed.

ASGI apps get the lifespan protocol (startup when the container starts
serving, shutdown when it stops) when they support it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import sys
import time
from collections.abc import Callable
from typing import Any

from .._tasks import spawn
from ..exception import InvalidError

Message = dict[str, Any]
FINAL_HOLD_S = 0.002  # how long a response's end waits to share a write with the input's output


class WebHost:
    """The container's web endpoints: their apps, built once, and the requests to them."""

    def __init__(self, container: Any) -> None:
        self.c = container  # the ContainerLoop: channel, running inputs, outputs
        self.config = container.spec.web_methods()
        self.apps: dict[str | None, Any] = {}
        self.lifespans: list[_Lifespan] = []
        self.lock: asyncio.Lock | None = None
        # Messages from the gateway for a running request (WebSocket frames), by input id.
        self.inboxes: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        # A response's last events, held to go out in one write with the input's output.
        self.final: dict[int, list[dict[str, Any]]] = {}

    def start(self, items: list[dict[str, Any]]) -> None:
        """Start requests (on the event loop, which reads the channel)."""
        assert self.c.aloop is not None
        for item in items:
            spawn(self.run(item), name=f"web input {item.get('id')}")

    def deliver(self, msg: dict[str, Any]) -> None:
        """A ``web_in`` message for a running request (on the event loop)."""
        self._inbox(int(msg["id"])).put_nowait(msg)

    def _inbox(self, input_id: int) -> asyncio.Queue[dict[str, Any]]:
        inbox = self.inboxes.get(input_id)
        if inbox is None:
            inbox = self.inboxes[input_id] = asyncio.Queue()
        return inbox

    def _flush_final(self, input_id: int) -> None:
        final = self.final.pop(input_id, None)
        if final:
            self._emit(*final)

    def _emit(self, *events: dict[str, Any]) -> None:
        with self.c.send_lock:
            self.c.chan.write(*events)

    async def app_for(self, method: str | None) -> Any:
        if method in self.apps:
            return self.apps[method]
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            if method not in self.apps:
                self.apps[method] = await self._build(method)
        return self.apps[method]

    async def _build(self, method: str | None) -> Any:
        cfg = self.config.get(method)
        fn = self.c.service.callables.get(method)
        if cfg is None or fn is None:
            raise InvalidError(
                f"{method or self.c.spec.tag} is not a web endpoint of this container"
            )
        kind = cfg["type"]
        if kind == "fastapi":
            app = _fastapi_app(fn, cfg)
        elif kind in ("asgi", "wsgi"):
            app = fn()
            if inspect.isawaitable(app):
                app = await app
            if kind == "wsgi":
                app = WsgiAdapter(app)
        else:  # web_server: the function starts a server on the port; requests are relayed to it
            result = await asyncio.get_running_loop().run_in_executor(None, fn)
            if inspect.isawaitable(result):
                await result
            await _wait_listening(
                int(cfg["port"]), float(cfg.get("startup_timeout", 5.0)), self.c.spec.tag
            )
            return PortRelay(int(cfg["port"]))
        if not callable(app):
            raise InvalidError(f"{self.c.spec.tag} returned {app!r}, not an {kind.upper()} app")
        lifespan = _Lifespan(app)
        if kind in ("asgi", "fastapi") and await lifespan.startup():
            self.lifespans.append(lifespan)
        return app

    async def shutdown(self) -> None:
        for lifespan in self.lifespans:
            await lifespan.shutdown()

    async def run(self, item: dict[str, Any]) -> None:
        from .loop import _Running

        input_id = item["id"]
        started = time.monotonic()
        running = _Running(input_id, started + self.c.spec.timeout, None)
        running.task = asyncio.current_task()
        self.c.running[input_id] = running
        try:
            app = await self.app_for(item.get("method"))
            if item["web"]["scope"].get("type") == "websocket":
                await self._serve_websocket(app, input_id, item["web"])
            else:
                await self._serve(app, input_id, item["web"])
            out = self.c._result(input_id, "success", None, started)
        except (
            BaseException
        ) as exc:  # the app may raise anything; a cancel arrives as CancelledError
            out = self.c._failure(input_id, exc, started)
        finally:
            self.c.running.pop(input_id, None)
            self.inboxes.pop(input_id, None)
        final = self.final.pop(input_id, None)
        if final:  # the response's end and the output in one write
            self._emit(*final, {"t": "outputs", "items": [out]})
        else:
            self.c.emit(out, force=True)

    def _scope(self, wire: dict[str, Any]) -> dict[str, Any]:
        scope = dict(wire)
        scope["headers"] = [(bytes(k), bytes(v)) for k, v in wire["headers"]]
        scope["client"] = tuple(wire["client"]) if wire.get("client") else None
        scope["server"] = tuple(wire["server"]) if wire.get("server") else None
        if self.lifespans:
            scope["state"] = dict(self.lifespans[0].state)
        return scope

    async def _serve_websocket(self, app: Any, input_id: int, request: dict[str, Any]) -> None:
        """One WebSocket: frames from the client arrive as ``web_in`` messages, the app's go out as events."""
        scope = self._scope(request["scope"])
        inbox = self._inbox(input_id)
        connected = closed = False

        async def receive() -> Message:
            nonlocal connected, closed
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            if closed:
                return {"type": "websocket.disconnect", "code": 1000}
            msg = await inbox.get()
            if msg.get("ev") == "ws_msg":
                if msg.get("text") is not None:
                    return {"type": "websocket.receive", "text": msg["text"]}
                return {"type": "websocket.receive", "bytes": bytes(msg.get("bytes") or b"")}
            closed = True
            return {"type": "websocket.disconnect", "code": int(msg.get("code") or 1000)}

        async def send(message: Message) -> None:
            nonlocal closed
            kind = message.get("type")
            base = {"t": "web", "id": input_id}
            if kind == "websocket.accept":
                headers = [[bytes(k), bytes(v)] for k, v in message.get("headers", [])]
                self._emit(
                    {
                        **base,
                        "ev": "ws_accept",
                        "subprotocol": message.get("subprotocol"),
                        "headers": headers,
                    }
                )
            elif kind == "websocket.send":
                if message.get("text") is not None:
                    self._emit({**base, "ev": "ws_send", "text": message["text"]})
                else:
                    self._emit(
                        {**base, "ev": "ws_send", "bytes": bytes(message.get("bytes") or b"")}
                    )
            elif kind == "websocket.close":
                closed = True
                self._emit(
                    {
                        **base,
                        "ev": "ws_close",
                        "code": int(message.get("code", 1000)),
                        "reason": message.get("reason") or "",
                    }
                )

        await app(scope, receive, send)

    async def _serve(self, app: Any, input_id: int, request: dict[str, Any]) -> None:
        scope = self._scope(request["scope"])
        body: bytes = request.get("body") or b""
        delivered = responded = False
        finished = asyncio.Event()
        held: list[Message] = []  # the start event, sent together with the first body chunk

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()  # the client is there until the response is done
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal responded
            kind = message.get("type")
            if kind == "http.response.start":
                if responded:
                    raise RuntimeError("the ASGI app started its response twice")
                headers = [[bytes(k), bytes(v)] for k, v in message.get("headers", [])]
                held.append(
                    {
                        "t": "web",
                        "id": input_id,
                        "ev": "start",
                        "status": int(message["status"]),
                        "headers": headers,
                    }
                )
                responded = True
            elif kind == "http.response.body":
                if not responded:
                    raise RuntimeError("the ASGI app sent a body before http.response.start")
                if finished.is_set():
                    return
                more = bool(message.get("more_body", False))
                event = {
                    "t": "web",
                    "id": input_id,
                    "ev": "body",
                    "body": bytes(message.get("body", b"")),
                    "more": more,
                }
                if more:
                    self._emit(*held, event)
                else:  # sent with the output if the app returns at once (almost every app does);
                    # one that goes on (Starlette's background tasks) has it sent 2 ms later anyway
                    self.final[input_id] = [*held, event]
                    asyncio.get_running_loop().call_later(FINAL_HOLD_S, self._flush_final, input_id)
                    finished.set()
                held.clear()

        try:
            await app(scope, receive, send)
        finally:
            ended = finished.is_set()
            finished.set()
        if not responded:
            raise RuntimeError("the ASGI app returned without sending a response")
        if not ended:  # an app that returned without ending its body
            self._emit(
                *held, {"t": "web", "id": input_id, "ev": "body", "body": b"", "more": False}
            )


def _fastapi_app(fn: Callable[..., Any], cfg: dict[str, Any]) -> Any:
    try:
        from fastapi import FastAPI
        from fastapi.middleware.cors import CORSMiddleware
    except ImportError as exc:
        raise InvalidError(
            "@ketch.fastapi_endpoint needs FastAPI in the function's image: "
            "image=ketch.Image.debian_slim().pip_install('fastapi')"
        ) from exc
    docs = bool(cfg.get("docs"))
    app = FastAPI(
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_api_route("/", fn, methods=[cfg.get("method", "GET")])
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]
    )
    return app


async def _wait_listening(port: int, timeout: float, tag: str) -> None:
    """Until something accepts connections on 127.0.0.1:``port`` (``startup_timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise InvalidError(
                    f"{tag}: nothing listens on port {port} {timeout:g} s after the function returned "
                    "(@ketch.web_server(port=..., startup_timeout=...))"
                ) from None
            await asyncio.sleep(0.05)


class PortRelay:
    """An ASGI app that passes requests and WebSockets on to the server on 127.0.0.1:``port``."""

    _HOP = {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"content-length",
    }

    def __init__(self, port: int) -> None:
        self.port = port
        self.session: Any = None

    def _session(self) -> Any:
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self.session

    def _target(self, scope: Message, scheme: str) -> tuple[str, list[tuple[str, str]]]:
        query = scope.get("query_string") or b""
        raw = scope.get("raw_path") or scope["path"].encode()
        url = f"{scheme}://127.0.0.1:{self.port}{raw.decode('latin-1')}" + (
            f"?{query.decode('latin-1')}" if query else ""
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.lower() not in self._HOP
        ]
        return url, headers

    async def __call__(
        self, scope: Message, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(
        self, scope: Message, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        import yarl

        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        url, headers = self._target(scope, "http")
        async with self._session().request(
            scope["method"],
            yarl.URL(url, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as resp:
            out = [
                (k.lower(), v)
                for k, v in resp.raw_headers
                if k.lower() not in (b"transfer-encoding", b"connection")
            ]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _websocket(
        self, scope: Message, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        import aiohttp
        import yarl

        await receive()  # websocket.connect
        url, headers = self._target(scope, "ws")
        try:
            upstream = await self._session().ws_connect(
                yarl.URL(url, encoded=True),
                headers=headers,
                protocols=scope.get("subprotocols") or (),
            )
        except aiohttp.ClientError:
            await send({"type": "websocket.close", "code": 1011})
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.protocol})

        async def down() -> None:
            async for msg in upstream:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await send({"type": "websocket.send", "text": msg.data})
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await send({"type": "websocket.send", "bytes": msg.data})
            await send({"type": "websocket.close", "code": upstream.close_code or 1000})

        relay = asyncio.ensure_future(down())
        try:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.receive":
                    if msg.get("text") is not None:
                        await upstream.send_str(msg["text"])
                    else:
                        await upstream.send_bytes(msg.get("bytes") or b"")
                else:
                    break
        finally:
            await upstream.close()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(relay, 5)


class _Lifespan:
    """The ASGI lifespan protocol for one app: startup now, shutdown at the end."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.replies: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[Any] | None = None

    async def startup(self) -> bool:
        """True if the app took part (and started); False if it does not speak lifespan."""
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "state": self.state,
        }
        self.task = asyncio.ensure_future(self.app(scope, self.inbox.get, self.replies.put))
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply is None:
            return False
        if reply.get("type") == "lifespan.startup.failed":
            raise RuntimeError(f"the app's lifespan startup failed: {reply.get('message', '')}")
        return True

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reply(), 10)

    async def _reply(self) -> Message | None:
        assert self.task is not None
        getter = asyncio.ensure_future(self.replies.get())
        await asyncio.wait([getter, self.task], return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        with contextlib.suppress(BaseException):
            self.task.result()  # an app without lifespan support raises or returns here
        return None


class WsgiAdapter:
    """Run a WSGI app as an ASGI one: each request in a worker thread, its body streamed."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(
        self, scope: Message, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            return
        request = await receive()
        loop = asyncio.get_running_loop()
        environ = _environ(scope, request.get("body", b""))

        def forward(message: Message) -> None:
            asyncio.run_coroutine_threadsafe(send(message), loop).result()

        await loop.run_in_executor(None, self._run, environ, forward)

    def _run(self, environ: dict[str, Any], forward: Callable[[Message], None]) -> None:
        head: list[Any] = []
        started = False

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            head[:] = [status, headers]
            return write

        def begin() -> None:
            nonlocal started
            if not started:
                if not head:
                    raise RuntimeError("the WSGI app did not call start_response")
                status, headers = head
                forward(
                    {
                        "type": "http.response.start",
                        "status": int(status.split(" ", 1)[0]),
                        "headers": [
                            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers
                        ],
                    }
                )
                started = True

        def write(data: bytes) -> None:
            begin()
            if data:
                forward({"type": "http.response.body", "body": data, "more_body": True})

        result = self.app(environ, start_response)
        try:
            for chunk in result:
                write(chunk)
            begin()
            forward({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def _environ(scope: Message, body: bytes) -> dict[str, Any]:
    server = scope.get("server") or ("127.0.0.1", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"] = scope["client"][0]
    for raw_name, raw_value in scope["headers"]:
        name, value = (
            raw_name.decode("latin-1").upper().replace("-", "_"),
            raw_value.decode("latin-1"),
        )
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name == "CONTENT_LENGTH":
            environ["CONTENT_LENGTH"] = value
        else:
            key = f"HTTP_{name}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ.setdefault("CONTENT_LENGTH", str(len(body)))
    return environ
