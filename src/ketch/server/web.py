"""The web gateway: each web endpoint gets a port of its own on 127.0.0.1.

A request to an endpoint's port becomes an input of its function (kept in
memory, never in the database), so the function's pool starts a container
when none is running, adds containers as concurrent requests grow
(``@ketch.concurrent`` sets how many one container takes) and scales back to
zero when idle, like any call. The container runs the endpoint's ASGI app
(``runtime/web.py``) and sends the response back as events on its channel:
``start`` (status and headers), then ``body`` chunks, which the gateway
writes out as they come, so streamed responses are never buffered.

Routes are rows of ``web_routes`` (label -> port and function), so an
endpoint keeps its URL across redeploys and restarts of the control plane.
Request bodies are read whole, up to ``web_max_body_mb`` (413 beyond).
``requires_proxy_auth`` endpoints need the ``Modal-Key`` and
``Modal-Secret`` headers of a token made by ``ketch token create`` (401
without them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from sqlalchemy import Column, Float, Integer, LargeBinary, String, Table, delete, select

from .._config import config
from .._ids import new_id
from .._serialization import deserialize_exception, pack, unpack
from .._spec import FunctionSpec
from .._web import check_label, default_label, endpoint_name
from ..exception import AlreadyExistsError, Error, NotFoundError
from . import web_inputs
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from .api import Api
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

web_routes = Table(
    "web_routes",
    metadata,
    Column("label", String, primary_key=True),
    Column("port", Integer, nullable=False),
    Column("app_id", String, nullable=False),
    Column("app_name", String, nullable=False),
    Column("function_id", String, nullable=False),
    Column("method", String),  # the class method serving it; NULL for a function
    Column("config", LargeBinary, nullable=False),  # msgpack of the endpoint's web config
    Column("updated_at", Float, nullable=False),
)

proxy_tokens = Table(
    "proxy_tokens",
    metadata,
    Column("id", String, primary_key=True),
    Column(
        "secret_hash", String, nullable=False
    ),  # SHA-256 of the secret; the secret is shown once
    Column("created_at", Float, nullable=False),
)

# Connection-level headers a proxy must not pass along (RFC 9110, 7.6.1).
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
}


@dataclass
class Route:
    label: str
    port: int
    app_id: str
    function_id: str
    method: str | None
    config: dict[str, Any]


class Exchange:
    """One request's events from its container, in order; ``done`` ends them."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def event(self, msg: dict[str, Any]) -> None:
        self.events.put_nowait(msg)

    def done(self, status: str, data: bytes | None) -> None:
        self.events.put_nowait({"ev": "done", "status": status, "data": data})


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(store: Store) -> tuple[str, str]:
    """A new proxy auth token: (id, secret). Only the secret's hash is kept."""
    token_id, secret = new_id("wk"), "ws-" + secrets.token_urlsafe(24)
    store.conn.execute(
        proxy_tokens.insert().values(id=token_id, secret_hash=_hash(secret), created_at=time.time())
    )
    store.conn.commit()
    return token_id, secret


def token_ok(store: Store, token_id: str, secret: str) -> bool:
    row = store.conn.execute(
        select(proxy_tokens.c.secret_hash).where(proxy_tokens.c.id == token_id)
    ).first()
    return row is not None and hmac.compare_digest(row[0], _hash(secret))


RESULT_PATH = "/__ketch/result/"
KEEP_RESULT_S = 600.0  # how long a redirected request's response waits to be fetched


class Gateway:
    def __init__(self, dispatcher: Dispatcher, host: str = "127.0.0.1") -> None:
        self.d = dispatcher
        self.store: Store = dispatcher.store
        self.host = host
        # Requests that outlived the synchronous window: token -> (port, exchange, when it was parked).
        self.parked: dict[str, tuple[int, Exchange, float]] = {}
        self.by_port: dict[int, Route] = {}
        self.sites: dict[int, web.BaseSite] = {}
        # Read once: a settings lookup reads the config file, too slow for every request.
        self.max_body = int(float(config.get("web_max_body_mb")) * 1024 * 1024)
        self.sync_window = float(config.get("web_sync_window"))
        self.runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self.runner.setup()
        for row in self.store.conn.execute(select(web_routes)).mappings().all():
            if self.d.app_running(row["app_id"]):
                await self._open(_route(row))

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # -- routes ------------------------------------------------------------------
    async def publish(
        self, app_id: str, app_name: str, deployed: bool, functions: list[dict[str, Any]]
    ) -> dict[str, str]:
        """Serve the web endpoints of an app's functions; their URLs by tag (``Cls.method`` for methods)."""
        urls: dict[str, str] = {}
        keep: set[str] = set()
        for fn in functions:
            spec: FunctionSpec = fn["spec"]
            for method, cfg in spec.web_methods().items():
                name = endpoint_name(spec.tag, method)
                label = cfg.get("label") or default_label(app_name, name)
                if not deployed:
                    label = check_label(f"{label[:59].rstrip('-')}-dev")  # as Modal's `serve` URLs
                row = self._row(label)
                if row is not None and row["app_id"] != app_id and row["app_name"] != app_name:
                    if self.d.app_running(row["app_id"]):
                        raise AlreadyExistsError(
                            f"web endpoint label {label!r} is served by app {row['app_name']!r}; "
                            "choose another label= or stop that app"
                        )
                route = Route(label, row["port"] if row else 0, app_id, fn["id"], method, dict(cfg))
                port = await self._open(route)
                stmt = self.store.insert(web_routes).values(
                    label=label,
                    port=port,
                    app_id=app_id,
                    app_name=app_name,
                    function_id=fn["id"],
                    method=method,
                    config=pack(cfg),
                    updated_at=time.time(),
                )
                self.store.conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["label"],
                        set_={
                            k: stmt.excluded[k]
                            for k in (
                                "port",
                                "app_id",
                                "app_name",
                                "function_id",
                                "method",
                                "config",
                                "updated_at",
                            )
                        },
                    )
                )
                keep.add(label)
                urls[name] = self._url(port)
        for route in [
            r for r in self.by_port.values() if r.app_id == app_id and r.label not in keep
        ]:
            await self._close(route.port)  # an endpoint the new version no longer has
            self.store.conn.execute(delete(web_routes).where(web_routes.c.label == route.label))
        self.store.conn.commit()
        return urls

    async def unpublish(self, app_id: str) -> None:
        """The app stopped: stop listening on its ports (kept in ``web_routes`` for its next run)."""
        for route in [r for r in self.by_port.values() if r.app_id == app_id]:
            await self._close(route.port)

    def urls(self, app_id: str) -> dict[str, str]:
        rows = (
            self.store.conn.execute(select(web_routes).where(web_routes.c.app_id == app_id))
            .mappings()
            .all()
        )
        out = {}
        for row in rows:
            spec = self.d.function_spec(row["function_id"])[0]
            out[endpoint_name(spec.tag, row["method"])] = self._url(row["port"])
        return out

    def _url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def _row(self, label: str) -> Any:
        return (
            self.store.conn.execute(select(web_routes).where(web_routes.c.label == label))
            .mappings()
            .first()
        )

    async def _open(self, route: Route) -> int:
        """Listen for ``route`` on its port (a new one if it has none or it was taken meanwhile)."""
        assert self.runner is not None
        if route.port in self.sites:
            self.by_port[route.port] = route
            return route.port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, route.port))
        except OSError:
            logger.warning(
                "port %d of web endpoint %s is taken; it gets a new one", route.port, route.label
            )
            sock.bind((self.host, 0))
        route.port = sock.getsockname()[1]
        site = web.SockSite(self.runner, sock)
        await site.start()
        self.sites[route.port] = site
        self.by_port[route.port] = route
        return route.port

    async def _close(self, port: int) -> None:
        self.by_port.pop(port, None)
        site = self.sites.pop(port, None)
        if site is not None:
            await site.stop()

    # -- requests ----------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = self._route_of(request)
        if route is None or not self.d.app_running(route.app_id):
            return _text(404, "ketch: no web endpoint is served here (its app is not running)")
        refusal = self._proxy_auth_refusal(request, route)
        if refusal is not None:
            return refusal
        if request.path.startswith(RESULT_PATH):
            return await self._result(request, route, request.path[len(RESULT_PATH) :])
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, route)
        body = await self._read_body(request)
        if body is None:
            return _text(
                413,
                f"ketch: request body over the limit of {self.max_body // 2**20} MiB "
                "(KETCH_WEB_MAX_BODY_MB)",
            )
        return await self._call(request, route, body)

    def _route_of(self, request: web.Request) -> Route | None:
        """The route served on the port ``request`` came in on."""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return self.by_port.get(sockname[1]) if sockname else None

    def _proxy_auth_refusal(self, request: web.Request, route: Route) -> web.Response | None:
        """The 401 for a request without a valid proxy token, where ``route`` asks for one."""
        if not route.config.get("requires_proxy_auth"):
            return None
        key, secret = request.headers.get("Modal-Key"), request.headers.get("Modal-Secret")
        if not key or not secret:
            return _text(
                401,
                "ketch: missing credentials for proxy authorization (Modal-Key, Modal-Secret)",
            )
        if not token_ok(self.store, key, secret):
            return _text(401, "ketch: invalid credentials for proxy authorization")
        return None

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The whole request body, or None when it is over ``max_body`` bytes."""
        limit = self.max_body
        if request.content_length is not None and request.content_length > limit:
            return None
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:  # a chunked body declares no length up front
                return None
        return bytes(body)

    async def _call(self, request: web.Request, route: Route, body: bytes) -> web.StreamResponse:
        """Run the request as an input of the route's function and send back its response."""
        exchange = Exchange()
        try:
            input_id = web_inputs.request(
                self.d, route.function_id, route.method, exchange, _scope(request, route.port), body
            )
        except Error as exc:
            return _text(503, f"ketch: {type(exc).__name__}: {exc}")
        try:
            first = await self._first_event(exchange)
            if first is None:  # still working after the synchronous window: see other, later
                return self._park(route.port, exchange)
            return await self._respond(request, exchange, first)
        except (asyncio.CancelledError, ConnectionResetError):
            web_inputs.cancel(self.d, input_id)  # the client went away
            raise

    async def _first_event(self, exchange: Exchange) -> dict[str, Any] | None:
        """The request's first event, or None if none came within ``web_sync_window`` seconds."""
        try:
            return await asyncio.wait_for(exchange.events.get(), self.sync_window)
        except TimeoutError:
            return None

    def _park(self, port: int, exchange: Exchange) -> web.Response:
        """Keep a slow request running and send the client to where its response will be (as Modal's 303)."""
        now = time.monotonic()
        for token, (_, _, since) in list(self.parked.items()):
            if now - since > KEEP_RESULT_S:
                del self.parked[token]
        token = secrets.token_urlsafe(16)
        self.parked[token] = (port, exchange, now)
        return web.Response(status=303, headers={"Location": f"{RESULT_PATH}{token}"})

    async def _result(self, request: web.Request, route: Route, token: str) -> web.StreamResponse:
        """A redirected request's response: once it has started, or another 303 here if it still has not."""
        parked = self.parked.pop(token, None)
        if parked is None or parked[0] != route.port:
            return _text(
                404,
                "ketch: no such pending result (each result can be fetched once, within 10 minutes)",
            )
        first = await self._first_event(parked[1])
        if first is None:
            self.parked[token] = (parked[0], parked[1], time.monotonic())
            return web.Response(status=303, headers={"Location": f"{RESULT_PATH}{token}"})
        return await self._respond(request, parked[1], first)

    async def _websocket(self, request: web.Request, route: Route) -> web.StreamResponse:
        """A WebSocket, both ways: the app accepts (or not), then frames flow until either side closes."""
        exchange = Exchange()
        try:
            input_id = web_inputs.request(
                self.d,
                route.function_id,
                route.method,
                exchange,
                _websocket_scope(request, route.port),
                b"",
            )
        except Error as exc:
            return _text(503, f"ketch: {type(exc).__name__}: {exc}")
        ws: web.WebSocketResponse | None = None
        pump: asyncio.Task[None] | None = None
        try:
            while True:
                ev = await exchange.events.get()
                kind = ev.get("ev")
                if kind == "ws_accept" and ws is None:
                    ws = await _accept_websocket(request, ev)
                    pump = asyncio.create_task(self._websocket_from_client(input_id, ws))
                elif kind == "ws_send" and ws is not None:
                    await _send_to_websocket(ws, ev)
                elif kind == "ws_close":
                    if ws is None:  # closed before accepting: the app refused the connection
                        return _text(403, "ketch: the app refused the WebSocket connection")
                    await ws.close(
                        code=int(ev.get("code") or 1000),
                        message=str(ev.get("reason") or "").encode(),
                    )
                elif kind == "done":
                    return await _websocket_ended(ws, ev)
        except (asyncio.CancelledError, ConnectionResetError):
            web_inputs.cancel(self.d, input_id)
            raise
        finally:
            if pump is not None:
                pump.cancel()

    async def _websocket_from_client(self, input_id: int, sock: web.WebSocketResponse) -> None:
        """Pass the client's frames to the app, then its disconnect (1006 when the socket broke)."""
        code = 1000
        try:
            async for msg in sock:
                if msg.type == WSMsgType.TEXT:
                    web_inputs.send(self.d, input_id, {"ev": "ws_msg", "text": msg.data})
                elif msg.type == WSMsgType.BINARY:
                    web_inputs.send(self.d, input_id, {"ev": "ws_msg", "bytes": msg.data})
                elif msg.type == WSMsgType.ERROR:
                    code = 1006
                    break
        finally:
            web_inputs.send(
                self.d, input_id, {"ev": "ws_disconnect", "code": sock.close_code or code}
            )

    async def _respond(
        self, request: web.Request, exchange: Exchange, first: dict[str, Any]
    ) -> web.StreamResponse:
        resp: web.StreamResponse | None = None
        ev: dict[str, Any] | None = first
        while True:
            if ev is None:
                ev = await exchange.events.get()
            kind = ev.get("ev")
            if kind == "start" and resp is None:
                resp = web.StreamResponse(status=int(ev["status"]))
                for name, value in ev.get("headers", []):
                    name_s = bytes(name).decode("latin-1")
                    if name_s.lower() not in _HOP:
                        resp.headers.add(name_s, bytes(value).decode("latin-1"))
                await resp.prepare(request)
            elif kind == "body" and resp is not None:
                if ev.get("body"):
                    await resp.write(ev["body"])
                if not ev.get("more"):
                    await resp.write_eof()
                    return resp
            elif kind == "done":
                if resp is None:
                    return _text(500, f"ketch: the endpoint failed: {_failure(ev)}")
                # The app ended (or its container died) mid-response: cut the connection,
                # so the client sees a broken response rather than a short one.
                if request.transport is not None:
                    request.transport.close()
                return resp
            ev = None


def _websocket_scope(request: web.Request, port: int) -> dict[str, Any]:
    """The ASGI WebSocket scope of ``request``: its HTTP scope, less the method, plus subprotocols."""
    scope = _scope(request, port)
    scope.update(type="websocket", scheme="ws")
    scope.pop("method", None)
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    scope["subprotocols"] = protocols
    return scope


async def _accept_websocket(request: web.Request, ev: dict[str, Any]) -> web.WebSocketResponse:
    """Complete the handshake with the subprotocol and headers of the app's ``ws_accept``."""
    sub = ev.get("subprotocol")
    ws = web.WebSocketResponse(protocols=[sub] if sub else (), max_msg_size=0)
    for name, value in ev.get("headers", []):
        ws.headers.add(bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
    await ws.prepare(request)
    return ws


async def _send_to_websocket(ws: web.WebSocketResponse, ev: dict[str, Any]) -> None:
    """Send the app's ``ws_send`` as a text frame, or a binary one when it carries no text."""
    if ev.get("text") is not None:
        await ws.send_str(ev["text"])
    else:
        await ws.send_bytes(bytes(ev.get("bytes") or b""))


async def _websocket_ended(
    ws: web.WebSocketResponse | None, ev: dict[str, Any]
) -> web.StreamResponse:
    """The response once the app's input is ``done``: an error if it never accepted, else ``ws`` closed."""
    if ws is None:
        return _text(
            500 if ev.get("status") != "success" else 403,
            f"ketch: the WebSocket endpoint ended without accepting: {_failure(ev)}",
        )
    if not ws.closed:
        await ws.close(code=1000 if ev.get("status") == "success" else 1011)
    return ws


def _route(row: Any) -> Route:
    return Route(
        row["label"],
        row["port"],
        row["app_id"],
        row["function_id"],
        row["method"],
        unpack(row["config"]),
    )


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


def _failure(ev: dict[str, Any]) -> str:
    data = ev.get("data")
    if not data:
        return str(ev.get("status"))
    with contextlib.suppress(Exception):
        exc = deserialize_exception(data)
        return f"{type(exc).__name__}: {exc}"
    return str(ev.get("status"))


def _scope(request: web.Request, port: int) -> dict[str, Any]:
    """The ASGI HTTP scope of ``request`` (msgpack-friendly: lists, bytes, str)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    raw_path, _, query = request.raw_path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [[k.lower(), v] for k, v in request.raw_headers],
        "client": [peer[0], peer[1]] if peer else None,
        "server": ["127.0.0.1", port],
    }


@rpc
def ProxyTokenCreate(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    token_id, secret = create_token(api.store)
    return {"token_id": token_id, "token_secret": secret}


@rpc
def ProxyTokenList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    rows = api.store.conn.execute(select(proxy_tokens.c.id, proxy_tokens.c.created_at)).all()
    return {"tokens": [{"token_id": r.id, "created_at": r.created_at} for r in rows]}


@rpc
def ProxyTokenDelete(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    gone = api.store.conn.execute(
        delete(proxy_tokens).where(proxy_tokens.c.id == str(body["token_id"]))
    )
    api.store.conn.commit()
    if not gone.rowcount:
        raise NotFoundError(f"no proxy token {body['token_id']!r}")
    return {}
