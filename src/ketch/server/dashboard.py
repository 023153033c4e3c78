"""The dashboard: a web page the control plane serves at ``/dashboard/`` on its API port.

- **Login.** ``ketch dashboard`` asks for a one-time link (``DashboardLogin``, owner and
  ``admin`` only): ``/dashboard/login?t=...``, good once, for 2 minutes. Opening it sets
  an HttpOnly, SameSite=Strict session cookie, scoped to ``/dashboard``, good for 12 h.
  Every other ``/dashboard`` path answers 401 without that cookie.
- **Never open on the network by default.** The API port binds 127.0.0.1 unless the owner
  binds it elsewhere.
- **Read only, but for one button.** Every route is a GET except ``POST /dashboard/replay``
  (a failed call's Replay button). That one needs the ``X-Ketch-Dashboard`` header, which
  another site's form cannot send, as well as the cookie, which is never sent cross-site.
- **No build step.** One HTML page and plain JavaScript (``dashboard_static/``). Charts
  are SVG drawn by that script.
- **Data.** The same handlers as the RPCs (``AppList``, ``AppInfo``, ``CallList``,
  ``CallShow``, ``UsageReport``, ...), plus per-function series read from indexed queries.
  They stay fast with a million calls stored (``benchmarks/observability.py``).
- **Live.** Server-sent events: the app list every 2 s, and log lines as they are
  written (filters as ``ketch app logs`` takes them).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..exception import Error, NotFoundError
from ..worker import gpus
from . import versions as _versions
from .call_records import call_handler as _call
from .rpc import rpc
from .store import LogFilter

if TYPE_CHECKING:
    from .api import Api

STATIC = Path(__file__).parent / "dashboard_static"
LINK_TTL_S = 120.0
SESSION_TTL_S = 12 * 3600.0
COOKIE = "ketch_dashboard"
SERIES_MINUTES = 60
LATENCY_SAMPLE = 2000
MAX_SIZED = 200  # objects of a kind whose size the objects page shows


class Sessions:
    """One-time login links and the sessions they open (in memory: a restart logs out)."""

    def __init__(self) -> None:
        self.links: dict[str, float] = {}
        self.sessions: dict[str, float] = {}

    def new_link(self) -> str:
        token = secrets.token_urlsafe(32)
        self.links[token] = time.monotonic() + LINK_TTL_S
        return token

    def open(self, token: str) -> str | None:
        expires = self.links.pop(token, None)  # good once
        if expires is None or expires < time.monotonic():
            return None
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = time.monotonic() + SESSION_TTL_S
        return sid

    def valid(self, sid: str | None) -> bool:
        expires = self.sessions.get(sid or "")
        return expires is not None and expires > time.monotonic()


@rpc
def DashboardLogin(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """A one-time link that opens the dashboard (``ketch dashboard``)."""
    return {"path": f"/dashboard/login?t={api.dashboard.new_link()}", "url": api.url}


def routes(api: Api, app: web.Application) -> None:
    """Add the dashboard's routes to the API's application."""
    dash = Dashboard(api)
    app.router.add_get("/dashboard/login", dash.login)
    app.router.add_get("/dashboard/", dash.page)
    app.router.add_get("/dashboard/static/{name}", dash.static)
    app.router.add_get("/dashboard/api/{what}", dash.data)
    app.router.add_get("/dashboard/events/{what}", dash.events)
    app.router.add_post("/dashboard/replay", dash.replay)


class Dashboard:
    def __init__(self, api: Api) -> None:
        self.api = api

    def _check(self, request: web.Request) -> None:
        if not self.api.dashboard.valid(request.cookies.get(COOKIE)):
            raise web.HTTPUnauthorized(
                text="not logged in: open the link `ketch dashboard` prints",
                content_type="text/plain",
            )

    async def login(self, request: web.Request) -> web.StreamResponse:
        sid = self.api.dashboard.open(request.query.get("t", ""))
        if sid is None:
            raise web.HTTPUnauthorized(
                text="this login link was used or has expired: run `ketch dashboard` again",
                content_type="text/plain",
            )
        response = web.HTTPFound("/dashboard/")
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(SESSION_TTL_S),
            httponly=True,
            samesite="Strict",
            path="/dashboard",
        )
        raise response

    async def page(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        return web.FileResponse(STATIC / "index.html", headers=_NO_FRAMES)

    async def static(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        name = request.match_info["name"]
        if name not in ("app.js", "style.css"):
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers=_NO_FRAMES)

    async def data(self, request: web.Request) -> web.Response:
        self._check(request)
        what, q = request.match_info["what"], dict(request.query)
        try:
            reply = await self._data(what, q)
        except Error as exc:
            status = 404 if isinstance(exc, NotFoundError) else 400
            return web.json_response({"error": str(exc)}, status=status)
        return web.json_response(reply, dumps=_dumps)

    async def _data(self, what: str, q: dict[str, str]) -> dict[str, Any]:
        api = self.api
        if what == "apps":
            return await _apps(api)
        if what == "app":
            return await _app(api, q.get("name", ""))
        if what == "calls":
            body = {k: v for k, v in q.items() if k in ("app", "function")}
            return await _call(api, "CallList", {**body, "failed": q.get("failed") == "1"})
        if what == "call":
            return await _call(api, "CallShow", {"call_id": q.get("id", "")})
        if what == "logs":
            rows, _ = await api.d.logs.read(_app_id(api, q.get("app", "")), 0, 0, 500, _filter(q))
            return {"logs": rows[-500:]}
        if what == "containers":
            return {
                "containers": (await _call(api, "ContainerList", {}))["containers"],
                "sandboxes": (await _call(api, "SandboxList", {})).get("sandboxes", []),
            }
        if what == "objects":
            out = {}
            for kind in ("volume", "dict", "queue", "secret"):  # names only, never values
                rows = (await _call(api, "ObjectList", {"kind": kind}))["objects"]
                for row in rows[:MAX_SIZED]:
                    row["size"] = await _size(api, kind, row["object_id"])
                out[kind] = rows
            return out
        if what == "usage":
            return await _call(api, "UsageReport", {"by": q.get("by") or "day"})
        raise NotFoundError(f"no dashboard data {what!r}")

    async def replay(self, request: web.Request) -> web.Response:
        """The replay button: the call's inputs again, remote, with the code that ran them
        (as ``ketch call replay``); answers the new call's id at once.

        The only route that does something: a POST with the ``X-Ketch-Dashboard`` header,
        which no form of another site can send (and a script there would need a CORS
        preflight this server never grants), on top of the SameSite=Strict cookie."""
        self._check(request)
        if request.headers.get("X-Ketch-Dashboard") != "1":
            raise web.HTTPForbidden(text="replays come from the dashboard's own button")
        try:
            reply = await _call(self.api, "CallReplay", {"call_id": request.query.get("id", "")})
            new_call = reply["call_id"]
        except Error as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"call_id": new_call})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``apps`` (the app list every 2 s), ``logs`` (new lines)."""
        self._check(request)
        what = request.match_info["what"]
        if what not in ("apps", "logs"):
            raise web.HTTPNotFound()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            if what == "apps":
                while True:
                    await _send(response, await _apps(self.api))
                    await asyncio.sleep(2.0)
            q = dict(request.query)
            app_id = _app_id(self.api, q.get("app", ""))
            after = self.api.store.last_log_seq(app_id) if q.get("from") != "start" else 0
            while True:
                rows, after = await self.api.d.logs.read(app_id, after, 25.0, 500, _filter(q))
                await _send(response, {"logs": rows})
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response


_NO_FRAMES = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def _dumps(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))


async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {_dumps(payload)}\n\n".encode())


def _app_id(api: Api, name: str) -> str:
    return str(
        api.resolve_app({"app_id": name} if name.startswith("ap-") else {"name": name})["id"]
    )


def _filter(q: dict[str, str]) -> LogFilter:
    return LogFilter(
        search=q.get("search") or None,
        tag=q.get("function") or None,
        call_id=q.get("call") or None,
        container_id=q.get("container") or None,
    )


ERRORS = ("failure", "timeout", "crash", "init_failure")


async def _apps(api: Api) -> dict[str, Any]:
    """The app list with inputs and errors counted since the control plane started (from
    the metrics' counters: the page turns two readings into a rate), and cost today.
    Apps stopped more than a day ago are left out."""
    apps = (await _call(api, "AppList", {}))["apps"]
    done: dict[str, int] = {}
    errors: dict[str, int] = {}
    for (app_name, _, outcome), n in api.d.metrics.calls.items():
        done[app_name] = done.get(app_name, 0) + n
        if outcome in ERRORS:
            errors[app_name] = errors.get(app_name, 0) + n
    day_ago = time.time() - 86400
    versions = _versions.latest(api.store)
    shown = []
    for app in apps:
        if app["state"] != "running" and (app.get("stopped_at") or 0) < day_ago:
            continue
        app["cost_today"] = api.d.meter.cost_today(app["app_id"])
        app["version"] = versions.get(app["name"]) if app["deployed"] else None
        app["inputs_total"] = done.get(app["name"], 0)
        app["errors_total"] = errors.get(app["name"], 0)
        shown.append(app)
    return {"apps": shown, "at": time.time()}


async def _app(api: Api, name: str) -> dict[str, Any]:
    info = await _call(
        api, "AppInfo", {"app_id": name} if name.startswith("ap-") else {"name": name}
    )
    app_id = info["app_id"]
    now = time.time()
    minute0 = int(now // 60) - (SERIES_MINUTES - 1)  # the chart's first minute; the last is now
    series = api.d.meter.call_series(app_id, minute0)
    latencies = api.store.call_latencies(app_id, minute0 * 60.0, LATENCY_SAMPLE)
    history = await _call(api, "AppHistory", {"name": info["name"]}) if info["deployed"] else {}
    m = api.d.metrics
    functions = []
    for fn in info["functions"]:
        lat = sorted(latencies.get(fn["function_id"], []))
        labels = api.d.metric_labels(fn["function_id"], app_id)
        cold_n, cold_mean = _histogram(m.cold_start_seconds.series.get(labels))
        _, queue_mean = _histogram(m.queue_seconds.series.get(labels))
        functions.append(
            {
                **fn,
                "per_minute": series.get(fn["function_id"], {}),
                "p50_s": _pct(lat, 50),
                "p99_s": _pct(lat, 99),
                "samples": len(lat),
                "cold_starts": cold_n,
                "cold_start_mean_s": cold_mean,
                "queue_mean_s": queue_mean,
                "failures": sum(
                    n for (a, t, o), n in m.calls.items() if (a, t) == labels and o in ERRORS
                ),
            }
        )
    containers = (await _call(api, "ContainerList", {"app_id": app_id}))["containers"]
    usage_of = getattr(api.d.worker, "usage", None)
    held = api.d.gpus.busy()
    samples = gpus.sample(sorted({i for c in containers for i in held.get(c["container_id"], [])}))
    for c in containers:
        got = usage_of(c["container_id"]) if usage_of is not None else None
        c["cpu_s"], c["memory_bytes"] = got if got else (None, None)
        c["gpus"] = [
            {"index": i, "utilization": samples.get(i, (None, None))[0]}
            for i in held.get(c["container_id"], [])
        ]
    calls = (await _call(api, "CallList", {"app": app_id, "limit": 25}))["calls"]
    return {
        **info,
        "functions": functions,
        "containers": containers,
        "calls": calls,
        "versions": history.get("versions", []),
        "minute0": minute0,
        "minutes": SERIES_MINUTES,
    }


async def _size(api: Api, kind: str, object_id: str) -> str:
    """A Dict's entries, a Queue's items, a Volume's bytes; nothing of a Secret."""
    try:
        if kind == "dict":
            return f"{(await _call(api, 'DictLen', {'object_id': object_id}))['len']} entries"
        if kind == "queue":
            body = {"object_id": object_id, "total": True}
            return f"{(await _call(api, 'QueueLen', body))['len']} items"
        if kind == "volume":
            body = {"object_id": object_id, "path": "/", "recursive": True}
            entries = (await _call(api, "VolumeList", body))["entries"]
            total = sum(e["size"] or 0 for e in entries if e["type"] == "f")
            return f"{len(entries)} entries, {total / 2**20:.1f} MiB"
    except Error:
        return "?"
    return ""


def _histogram(row: list[float] | None) -> tuple[int, float | None]:
    """(count, mean) of a metrics histogram's row (bucket counts, then the sum)."""
    n = int(sum(row[:-1])) if row else 0
    return n, (row[-1] / n if row and n else None)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]
