"""``ketch container list|logs|stop``: the containers of a control plane, one at a time.

A container is listed while it starts and runs; the last 1,000 that exited are
still found by id (for their logs), with why they exited. Stopping one is what
scale-down does: it is told to stop, killed after a grace period, and the
inputs it was running fail over to another container (they are not lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exception import NotFoundError
from .rpc import rpc
from .store import LogFilter

if TYPE_CHECKING:
    from .api import Api


def _names(api: Api, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    notes = start_notes(api)
    for row in rows:
        app = api.store.get_app(row["app_id"])
        row["app_name"] = app["name"] if app is not None else ""
        row["start"] = notes.get(row["container_id"], "")
    return rows


def start_notes(api: Api) -> dict[str, str]:
    """How each running container started, and how fast (a fresh sandbox, a fork of its
    template, its memory snapshot), where the runtime says."""
    notes = getattr(api.d.worker, "start_notes", None)
    return dict(notes) if isinstance(notes, dict) else {}


@rpc
def ContainerList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Running (and starting) containers, of one app (``app_id`` or ``name``) or all."""
    app_id = api.resolve_app(body)["id"] if body.get("app_id") or body.get("name") else None
    rows = sorted(api.d.live_containers(app_id), key=lambda r: r["started_at"])
    return {"containers": _names(api, rows)}


def _container(api: Api, container_id: Any) -> dict[str, Any]:
    seen = api.d.describe_container(str(container_id))
    if seen is None:
        raise NotFoundError(f"no container {container_id!r} (running, or among the last exited)")
    return seen


@rpc
def ContainerStop(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    seen = _container(api, body["container_id"])
    if seen["state"] == "exited":
        raise NotFoundError(f"container {seen['container_id']} already exited ({seen['reason']})")
    api.d.stop_container(seen["container_id"])
    return {}


@rpc
async def ContainerLogs(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """A container's output after ``after`` (a log sequence number); waits up to
    ``timeout`` s for more while it runs. ``after`` in the reply is where to go on from."""
    seen = _container(api, body["container_id"])
    after, limit = int(body.get("after", 0)), int(body.get("limit", 1000))
    timeout = float(body.get("timeout", 0)) if seen["state"] != "exited" else 0.0
    if seen["state"] == "exited":
        await api.d.logs.flush()  # its last lines may still sit in the buffer
    only = LogFilter(container_id=seen["container_id"])
    rows, cursor = await api.d.logs.read(seen["app_id"], after, timeout, limit, only)
    state = _container(api, seen["container_id"])["state"]
    return {"logs": rows, "after": cursor, "state": state, "more": len(rows) == limit}
