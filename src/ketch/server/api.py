"""The HTTP API: ``POST /rpc/<Method>`` with msgpack bodies, plus blob upload/download.

Every request is authenticated (``auth``): HTTP requests carry
``Authorization: Bearer <token>``; a handler that takes a third argument gets
the :class:`~ketch.server.auth.Caller` to scope what it does.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from sqlalchemy.exc import DBAPIError, StatementError

from .. import __version__
from .._config import config
from .._ids import new_id, stable_id
from .._serialization import MAX_PAYLOAD_BYTES, pack, unpack
from .._spec import FunctionSpec
from ..exception import (
    Error,
    InvalidError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    wire_name,
)
from . import auth, dashboard, metrics, schemas
from .auth import Caller
from .blobs import receive_blob
from .dispatcher import Dispatcher
from .rpc import HANDLERS as _HANDLERS
from .rpc import WANTS_CALLER as _WANTS_CALLER
from .rpc import rpc
from .store import LogFilter
from .volumes import VolumeService

logger = logging.getLogger(__name__)

_STATUS = {
    "NotFoundError": 404,
    "InvalidError": 400,
    "PayloadTooLargeError": 413,
    "AlreadyExistsError": 409,
    "AuthError": 401,
    "PermissionDeniedError": 403,
    "ResourceUnavailableError": 429,  # this node cannot take it (full of sandboxes, no such GPU)
    "SandboxFilesystemNotFoundError": 404,
    "SandboxFilesystemIsADirectoryError": 400,
    "SandboxFilesystemNotADirectoryError": 400,
    "SandboxFilesystemPermissionError": 403,
    "SandboxFilesystemFileExistsError": 409,
    "SandboxFilesystemDirectoryNotEmptyError": 400,
    "SandboxFilesystemError": 400,
}
# The largest RPC request (HTTP body or frame): a Dict or Queue item is at most 64 MiB,
# and clients send call inputs in batches of at most 16 MiB (larger arguments are blobs).
MAX_RPC_BYTES = 80 << 20
CALLER = web.RequestKey("caller", Caller)


# What SQLite raises for a value it cannot bind or store (their text quotes SQL); not disk or lock errors.
_BAD_VALUE: tuple[type[BaseException], ...] = (
    OverflowError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)


try:  # PostgreSQL's (psycopg's) kinds of the same
    import psycopg

    _BAD_VALUE += (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)
except ImportError:  # PostgreSQL is optional: `pip install 'ketch[postgres]'`
    pass


def _bad_value(exc: BaseException) -> bool:
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return True  # a parameter SQLAlchemy could not process
    return isinstance(exc.orig if isinstance(exc, DBAPIError) else exc, _BAD_VALUE)


def error_reply(exc: BaseException, method: str) -> tuple[int, dict[str, Any]]:
    """The status and ``{"error": {"type", "message"}}`` reply for a failed RPC."""
    if isinstance(exc, (Error, KeyError, TypeError, ValueError)):
        name = wire_name(exc) if isinstance(exc, Error) else "InvalidError"
        message = (
            str(exc) if isinstance(exc, Error) else f"bad request: {type(exc).__name__}: {exc}"
        )
        status = _STATUS.get(name, 400 if not isinstance(exc, Error) else 500)
        return status, {"error": {"type": name, "message": message}}
    if _bad_value(exc):  # a value the store cannot take that no schema caught
        logger.warning("%s: bad value reached the store", method, exc_info=exc)
        return 400, {
            "error": {
                "type": "InvalidError",
                "message": f"{method}: a value is out of range or of the wrong type",
            }
        }
    logger.error("%s failed", method, exc_info=exc)  # the traceback stays in the server's log
    return 500, {
        "error": {
            "type": "ServerError",
            "message": f"internal error in {method} (see the control plane's log)",
        }
    }


async def _finish(
    reply: Awaitable[dict[str, Any]],
    method: str,
    store: Any,
    recorded: metrics.Metrics,
    started: float,
) -> tuple[int, dict[str, Any]]:
    try:
        return 200, await reply
    except Exception as exc:
        _after_db_error(store, exc)
        return error_reply(exc, method)
    finally:
        metrics.timed(recorded, method, started)


def _after_db_error(store: Any, exc: BaseException) -> None:
    """PostgreSQL refuses every statement after a failed one until a rollback."""
    if getattr(store, "postgres", False) and isinstance(exc, (DBAPIError, *_BAD_VALUE)):
        with contextlib.suppress(Exception):
            store.rollback()


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


class Api:
    def __init__(
        self, dispatcher: Dispatcher, started_at: float, authenticator: auth.Authenticator
    ) -> None:
        self.d = dispatcher
        self.store = dispatcher.store
        self.started_at = started_at
        self.auth = authenticator
        self.url = ""
        self._registry: CollectorRegistry | None = None
        self.dashboard = dashboard.Sessions()  # its login links and sessions

    def app(self) -> web.Application:
        application = web.Application(
            client_max_size=MAX_RPC_BYTES, middlewares=[self._authenticate]
        )
        application.router.add_post("/rpc/{method}", self.handle_rpc)
        application.router.add_put("/blobs", self.put_blob)
        application.router.add_get("/blobs/{blob_id}", self.get_blob)
        application.router.add_get("/metrics", self.get_metrics)
        dashboard.routes(self, application)  # a session cookie, not a token (dashboard.py)
        volumes = self.d.volumes
        if isinstance(volumes, VolumeService):  # the dispatcher types it as what containers use
            application.router.add_put("/volume-blobs", volumes.put_blob)
            application.router.add_get("/volume-blobs/{blob_id}", volumes.get_blob)
        return application

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every route needs a token (before any body is read); ``/rpc`` checks the method too.
        The dashboard's pages check their session cookie themselves."""
        if request.path.startswith("/dashboard/"):
            return await handler(request)  # type: ignore[no-any-return]
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        caller = self.auth.identify(_bearer(request), auth.peer_uid(sock))
        if caller is None:
            status, reply = error_reply(auth.unauthenticated(), request.path)
            return web.Response(status=status, body=pack(reply), content_type="application/msgpack")
        request[CALLER] = caller
        return await handler(request)  # type: ignore[no-any-return]

    async def handle_rpc(self, request: web.Request) -> web.Response:
        """``POST /rpc/<Method>``: the HTTP form of an RPC (the frame form is in ``frames``)."""
        method = request.match_info["method"]
        try:
            body = unpack(await request.read())
        except web.HTTPRequestEntityTooLarge:
            status, reply = error_reply(
                PayloadTooLargeError(_too_large(method, request.content_length)), method
            )
        except Exception as exc:
            status, reply = error_reply(InvalidError(f"malformed request body: {exc}"), method)
        else:
            status, reply = await self.invoke(method, body, request[CALLER])
        return web.Response(status=status, body=pack(reply), content_type="application/msgpack")

    def start(
        self, method: str, body: Any, caller: Caller | None
    ) -> tuple[int, dict[str, Any]] | Awaitable[tuple[int, dict[str, Any]]]:
        """Run RPC ``method`` for ``caller``: ``(status, reply)`` at once, or an awaitable of it.

        Handlers that never wait (Dict and Queue operations) are plain functions
        and answer here without a task; the rest are coroutines, or plain
        functions that return one when they must wait (a blocking Queue get).
        """
        handler = _HANDLERS.get(method)
        started = time.perf_counter()
        try:
            caller = auth.check_method(caller, method)
            if handler is None:
                raise NotFoundError(f"no API method {method!r}")
            if not isinstance(body, dict):
                raise InvalidError("request body must be a msgpack map")
            schemas.validate(method, body)
            reply = handler(self, body, caller) if method in _WANTS_CALLER else handler(self, body)
        except Exception as exc:
            _after_db_error(self.store, exc)
            if handler is not None:
                metrics.timed(self.d.metrics, method, started)
            return error_reply(exc, method)
        if inspect.isawaitable(reply):
            return _finish(reply, method, self.store, self.d.metrics, started)
        metrics.timed(self.d.metrics, method, started)
        return 200, reply

    async def invoke(
        self, method: str, body: Any, caller: Caller | None
    ) -> tuple[int, dict[str, Any]]:
        started = self.start(method, body, caller)
        return await started if inspect.isawaitable(started) else started

    async def get_metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics`` (Prometheus's text format): the owner's, an admin's or a deploy
        token only; a container's or an invoke token gets 403."""
        caller = request[CALLER]
        if caller.role not in ("owner", "admin", "deploy"):
            status, reply = error_reply(
                PermissionDeniedError(f"{caller.describe()} may not read the metrics"), "metrics"
            )
            return web.Response(status=status, body=pack(reply), content_type="application/msgpack")
        if self._registry is None:
            self._registry = metrics.registry(self.d)
        # On the event loop: the collector reads the dispatcher's live state (a thread could
        # see a dict change size under it). A scrape of a few hundred series takes ~1 ms.
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def put_blob(self, request: web.Request) -> web.Response:
        """Stream a call payload into the blob store (never the whole body in memory)."""
        try:
            blob_id, _ = await receive_blob(request.content, self.d.blobs, MAX_PAYLOAD_BYTES)
        except PayloadTooLargeError as exc:
            status, reply = error_reply(exc, "PUT /blobs")
            return web.Response(status=status, body=pack(reply))
        return web.Response(body=pack({"blob_id": blob_id}))

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        try:
            return web.FileResponse(self.d.blobs.existing(request.match_info["blob_id"]))
        except NotFoundError as exc:
            return web.Response(
                status=404, body=pack({"error": {"type": "NotFoundError", "message": str(exc)}})
            )

    def resolve_app(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("app_id"):
            app = self.store.get_app(body["app_id"])
        elif body.get("name"):
            app = self.store.find_app(body["name"])
        else:
            raise InvalidError("give app_id or name")
        if app is None:
            raise NotFoundError(f"no app {body.get('app_id') or body.get('name')!r}")
        return app

    def check_call(
        self, caller: Caller, what: str, app_id: str, creator_app: str | None = None
    ) -> None:
        """``auth.check_call`` with the app's deployed flag looked up."""
        if caller.role in ("container", "invoke"):
            app = self.store.get_app(app_id)
            auth.check_call(caller, what, app_id, bool(app and app["deployed"]), creator_app)


def _too_large(method: str, size: int | None) -> str:
    got = f"{size / 2**20:.0f} MiB" if size else "its body"
    return f"{method}: a request of {got} is over the limit of {MAX_RPC_BYTES >> 20} MiB"


@rpc
async def Status(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": api.started_at,
        "url": api.url,
        "runtime": api.d.worker.name,
        "state": api.store.describe(),
        "isolation": api.d.worker.isolation,
        "gpus": api.d.gpus.inventory.describe(),
        "n_apps": len(api.store.running_apps()),
        "n_containers": api.d.worker.running(),
    }


@rpc
async def AppLookup(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """``App.lookup(name, create_if_missing=)``: the running deployed app of that name, or
    a new empty deployed one."""
    name = str(body["name"])
    app = api.store.find_app(name, deployed_only=True)
    if app is not None and app["state"] == "running":
        return {"app_id": app["id"]}
    if not body.get("create_if_missing"):
        raise NotFoundError(
            f"no deployed app {name!r}: deploy it, or App.lookup({name!r}, create_if_missing=True)"
        )
    app_id = new_id("ap")
    api.store.create_app(app_id, name, True, [])
    api.d.app_changed(app_id)
    return {"app_id": app_id}


@rpc
async def AppCreate(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """Create an ephemeral app, or deploy (a new version of) a named one."""
    auth.check_host_paths(caller, [p for raw in body["functions"] for p in auth.host_paths(raw)])
    name = str(body.get("name") or "")
    deployed = bool(body.get("deployed"))
    if deployed and not name:
        raise InvalidError("a deployed app needs a name")
    app_id = body["app_id"]
    existing = api.store.find_app(name, deployed_only=True) if deployed else None
    if existing is not None and existing["state"] == "running":
        app_id = existing["id"]
    old = {f["id"]: f["spec"] for f in api.store.app_functions(app_id)}
    fns: list[dict[str, Any]] = []
    specs: list[dict[str, Any]] = []
    for raw in body["functions"]:
        spec = FunctionSpec.from_wire(raw)
        fid = stable_id("fu", app_id, spec.tag)
        fns.append({"id": fid, "tag": spec.tag, "spec": pack(spec.to_wire())})
        specs.append({"id": fid, "spec": spec})
    api.store.create_app(app_id, name or app_id, deployed, fns)
    api.d.app_changed(app_id)
    web_urls = {}
    if api.d.gateway is not None and any(s["spec"].web_methods() for s in specs):
        web_urls = await api.d.gateway.publish(app_id, name or app_id, deployed, specs)
    for fn in fns:
        if fn["id"] in old and old[fn["id"]] != fn["spec"]:
            api.d.forget_function(fn["id"])
    version = None
    if deployed:
        api.d.warm_deployed(app_id)
        if api.d.schedules is not None:
            api.d.schedules.sync(app_id, specs)
        version = _versions.record(
            api.store,
            name,
            app_id,
            list(body["functions"]),
            str(body.get("source_hash") or ""),
            str(body.get("note") or ""),
        )
    heartbeat_s = min(15.0, float(config.get("ephemeral_app_timeout")) / 4)
    return {
        "app_id": app_id,
        "function_ids": {f["tag"]: f["id"] for f in fns},
        "heartbeat_s": heartbeat_s,
        "web_urls": web_urls,
        # Options this control plane cannot hold, for the client to print: never a silent no-op.
        "warnings": [
            f"{s['spec'].tag}: {what}" for s in specs for what in api.d.worker.unenforced(s["spec"])
        ],
        "version": version,
    }


@rpc
async def AppStop(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    app = api.resolve_app(body)
    if app["state"] != "stopped":
        await api.d.stop_app(app["id"], wait=float(body.get("wait", 5.0)))
    return {"app_id": app["id"]}


@rpc
async def AppHeartbeat(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    api.store.heartbeat(body["app_id"])
    return {}


@rpc
async def AppList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    apps = []
    next_runs = api.d.schedules.next_runs() if api.d.schedules is not None else {}
    for app in api.store.list_apps():
        apps.append(
            {
                "app_id": app["id"],
                "name": app["name"],
                "state": app["state"],
                "deployed": bool(app["deployed"]),
                "created_at": app["created_at"],
                "stopped_at": app["stopped_at"],
                "n_functions": len(api.store.app_functions(app["id"])),
                "n_containers": api.d.app_container_count(app["id"]),
                "next_run": next_runs.get(app["id"]) if app["state"] == "running" else None,
            }
        )
    return {"apps": apps}


@rpc
async def AppInfo(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """An app's functions, web endpoints, schedules (next and last run) and live version."""
    app = api.resolve_app(body)
    functions = [
        {"tag": f["tag"], "function_id": f["id"]} for f in api.store.app_functions(app["id"])
    ]
    history = _versions.history(api.store, app["name"]) if app["deployed"] else []
    notes = _containers.start_notes(api)
    return {
        "app_id": app["id"],
        "name": app["name"],
        "state": app["state"],
        "deployed": bool(app["deployed"]),
        "created_at": app["created_at"],
        "n_containers": api.d.app_container_count(app["id"]),
        "functions": functions,
        "web_urls": api.d.gateway.urls(app["id"]) if api.d.gateway is not None else {},
        "schedules": api.d.schedules.describe(app["id"]) if api.d.schedules is not None else [],
        "version": history[-1]["version"] if history else None,
        "sandboxes": api.d.sandboxes.running(app["id"]) if api.d.sandboxes is not None else [],
        "cost_today": api.d.meter.cost_today(app["id"]),
        "budget_per_day": api.d.meter.budget(app["name"]),
        "containers": [
            {
                "container_id": c["container_id"],
                "function": c["function"],
                "state": c["state"],
                "start": notes.get(c["container_id"], ""),
            }
            for c in api.d.live_containers(app["id"])
        ],
    }


@rpc
async def AppLogs(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    app = api.resolve_app(body)
    timeout = float(body.get("timeout", 0)) if app["state"] == "running" else 0.0
    if app["state"] != "running":
        await api.d.logs.flush()  # a stopped app's last lines may still sit in the buffer
    filters = LogFilter(
        since=body.get("since"),
        until=body.get("until"),
        search=body.get("search") or None,
        tag=body.get("function") or None,
        call_id=body.get("call_id") or None,
        container_id=body.get("container_id") or None,
    )
    rows, cursor = await api.d.logs.read(
        app["id"], int(body.get("after", 0)), timeout, int(body.get("limit", 1000)), filters
    )
    state = (api.store.get_app(app["id"]) or app)["state"]
    return {"logs": rows, "state": state, "app_id": app["id"], "cursor": cursor}


@rpc
async def FunctionLookup(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    app = api.store.find_app(body["app_name"], deployed_only=True)
    if app is None or app["state"] != "running":
        raise NotFoundError(f"no deployed app {body['app_name']!r} (deploy it with `ketch deploy`)")
    for fn in api.store.app_functions(app["id"]):
        if fn["tag"] == body["tag"]:
            urls = api.d.gateway.urls(app["id"]) if api.d.gateway is not None else {}
            return {
                "function_id": fn["id"],
                "spec": unpack(fn["spec"]),
                "app_id": app["id"],
                "web_urls": urls,
            }
    raise NotFoundError(f"app {body['app_name']!r} has no function or class {body['tag']!r}")


@rpc
async def FunctionGetCurrentStats(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """``Function.get_current_stats()``: inputs waiting, and containers up or starting, over
    every pool of the function (a class has one per set of parameters)."""
    function_id = str(body["function_id"])
    _, app_id = api.d.function_spec(function_id)
    if caller.role == "container":
        api.check_call(caller, "reading this function's stats", app_id)
    backlog = runners = 0
    for key, pool in api.d.pools.items():
        if key == function_id or key.startswith(function_id + ":"):
            backlog += pool.backlog
            runners += pool.n_live
    return {"backlog": backlog, "num_total_runners": runners}


@rpc
async def CallCreate(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    if caller.role in ("container", "invoke"):
        _, app_id = api.d.function_spec(str(body["function_id"]))
        api.check_call(caller, "calling this function", app_id)
        with contextlib.suppress(NotFoundError):  # a new call id (the usual case) is free to take
            _check_call_id(api, caller, str(body["call_id"]))
    state = api.d.create_call(body, caller.app_id)
    wait = float(body.get("wait", 0))
    outputs: list[dict[str, Any]] = []
    done = False
    if wait > 0:
        outputs, done = await api.d.wait_outputs(state.id, 0, wait, int(body.get("limit", 1000)))
    return {"call_id": state.id, "outputs": outputs, "done": done}


@rpc
async def CallPutInputs(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    _check_call_id(api, caller, body["call_id"])
    api.d.put_inputs(body["call_id"], body["inputs"], body.get("n_inputs"))
    return {}


@rpc
async def CallGetOutputs(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    _check_call_id(api, caller, body["call_id"])
    outputs, done = await api.d.wait_outputs(
        body["call_id"],
        int(body.get("after", 0)),
        float(body.get("timeout", 0)),
        int(body.get("limit", 1000)),
    )
    state = api.d.call_state(body["call_id"])
    return {"outputs": outputs, "done": done, "n_inputs": state.n_inputs, "kind": state.kind}


@rpc
async def CallCancel(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    _check_call_id(api, caller, body["call_id"])
    api.d.cancel_call(body["call_id"])
    return {"at": time.time()}


@rpc
async def ImageBuild(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """Start (or join) the build of ``image`` (an ``Image.to_wire()`` dict)."""
    auth.check_host_paths(caller, auth.host_paths(body["image"]))
    if api.d.builds is None:
        return {"skipped": f"images are not applied by the {api.d.worker.name} runtime"}
    from ..image import Image

    wire = Image.from_wire(body["image"]).to_wire()  # checks every layer hash
    api.d.builds.remember(wire)
    if not body.get("force") and api.d.builds.builder.cached(wire) is not None:
        return {"cached": True, "image_hash": wire["layers"][-1]["hash"]}
    force = body.get("force") or ""
    if force not in ("", "all", "marked"):
        force = "marked" if force is True else ""
    job = api.d.builds.start(wire, str(force))
    return {"build_id": job.id, "image_hash": job.image_hash}


def _check_call_id(api: Api, caller: Caller, call_id: str) -> None:
    if caller.role in ("container", "invoke"):
        state = api.d.call_state(str(call_id))
        api.check_call(caller, f"function call {call_id}", state.app_id, state.creator_app)


@rpc
async def ApiTokenCreate(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """A new API token with ``role`` (invoke, deploy or admin); the token is in this reply only."""
    token_id, token = api.auth.create(str(body.get("role") or ""))
    return {"token_id": token_id, "token": token}


@rpc
async def ApiTokenList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    return {"tokens": api.auth.list()}


@rpc
async def ApiTokenRevoke(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    api.auth.revoke(str(body["token_id"]))
    return {}


@rpc
async def ImageFromId(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """``Image.from_id``: the image built here under that id (``im-`` + its last layer's hash)."""
    if api.d.builds is None:
        raise NotFoundError(f"images are not applied by the {api.d.worker.name} runtime")
    return {"image": api.d.builds.recall(str(body["image_id"]))}


@rpc
async def ImageBuildStatus(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """New output lines of a build since ``offset``; waits up to ``wait`` seconds for some."""
    if api.d.builds is None:
        raise NotFoundError("this control plane does not build images")
    wait = min(float(body.get("wait", 0)), 60.0)
    return await api.d.builds.status(str(body["build_id"]), int(body.get("offset", 0)), wait)


# Importing these modules registers their handlers (``@rpc``); api's own are above.
from . import call_records as _call_records  # noqa: E402, F401
from . import containers as _containers  # noqa: E402, F401
from . import dicts as _dicts  # noqa: E402, F401
from . import nodes as _nodes  # noqa: E402, F401
from . import objects as _objects  # noqa: E402, F401
from . import queues as _queues  # noqa: E402, F401
from . import sandboxes as _sandboxes  # noqa: E402, F401
from . import secret_store as _secret_store  # noqa: E402, F401
from . import tunnels as _tunnels  # noqa: E402, F401
from . import usage as _usage  # noqa: E402, F401
from . import variants as _variants  # noqa: E402, F401
from . import versions as _versions  # noqa: E402
from . import volumes as _volumes  # noqa: E402, F401
from . import web as _web  # noqa: E402, F401
