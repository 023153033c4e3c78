"""Past calls: ``ketch call list``, ``ketch call show``, and what ``ketch call replay`` needs.

Every call keeps, for ``call_retention_days`` (7 by default): its arguments (the
pickled bytes its caller sent), its results, the text its containers made of both
(reprs, the traceback of a failure; for the first ``DETAIL_FIRST`` inputs), its log
lines, its cost, and the spec it ran with (``spec_archive``, by hash: the code version,
a deploy's source snapshot included).

The control plane never unpickles any of it: what ``show`` prints is text made inside
the containers. Only ``replay --local`` unpickles arguments, in the user's own process,
as it runs their code there on purpose.

RPCs, for the owner, ``admin`` and ``deploy`` tokens (never containers or ``invoke``
tokens): ``CallList``, ``CallShow``, ``CallReplaySpec``, ``CallReplay``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .._config import config
from .._serialization import unpack
from ..exception import NotFoundError
from .auth import Caller
from .rpc import HANDLERS, WANTS_CALLER, rpc
from .store import LogFilter

if TYPE_CHECKING:
    from .api import Api
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

MAX_LIST = 1000


def _label(api: Api, row: dict[str, Any]) -> None:
    """Name a row's app and function (the dispatcher's cached labels: no query per row)."""
    app, tag = api.d.metric_labels(row["function_id"], row["app_id"])
    row["app"], row["function"] = app, tag


def _call(api: Api, call_id: str) -> dict[str, Any]:
    call = api.store.get_call(call_id)
    if call is None:
        raise NotFoundError(
            f"no call {call_id!r}: calls are kept call_retention_days (7 by default)"
        )
    return call


@rpc
def CallList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Calls, newest first: of an app (by name or id), of one of its functions, failed ones."""
    apps = api.store.list_apps()
    app_ids = None
    if body.get("app"):
        wanted = str(body["app"])
        app_ids = [a["id"] for a in apps if wanted in (a["id"], a["name"])]
        if not app_ids:
            raise NotFoundError(f"no app {wanted!r}")
    function_ids = None
    if body.get("function"):
        function_ids = [
            f["id"]
            for a in apps
            if app_ids is None or a["id"] in app_ids
            for f in api.store.app_functions(a["id"])
            if f["tag"] == body["function"]
        ]
    limit = min(int(body.get("limit") or 50), MAX_LIST)
    rows = api.store.list_calls(app_ids, function_ids, bool(body.get("failed")), limit)
    api.d.meter.flush()  # (once: every row's cost below is then in the store)
    for row in rows:
        _label(api, row)
        usage = api.d.meter.call(row["call_id"], flush=False)
        row["cost"] = usage["cost"] if usage else None
    return {"calls": rows}


@rpc
def CallShow(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """One call: what it was given and gave back (as its containers wrote them), its
    inputs' states, its log lines, timing, cost and code version."""
    call = _call(api, str(body["call_id"]))
    _label(api, call)
    limit = min(int(body.get("limit") or 20), MAX_LIST)
    results = []
    for row in api.store.call_results(call["id"], limit):
        detail = unpack(row["detail"]) if row["detail"] else {}
        results.append(
            {"idx": row["idx"], "status": row["status"], "at": row["created_at"], **detail}
        )
    inputs = [
        {"idx": r["idx"], "state": r["state"], "attempts": r["attempts"]}
        for r in api.store.call_inputs(call["id"], limit)
    ]
    logs = _logs(api, call)
    return {
        "call_id": call["id"],
        "app": call["app"],
        "app_id": call["app_id"],
        "function": call["function"],
        "method": call["method"],
        "kind": call["kind"],
        "n_inputs": call["n_inputs"],
        "created_at": call["created_at"],
        "version": call["spec_hash"],
        "inputs": inputs,
        "results": results,
        "logs": logs,
        "usage": api.d.meter.call(call["id"]),
    }


def _logs(api: Api, call: dict[str, Any]) -> list[dict[str, Any]]:
    """The call's log lines, as the store has them now (at most 500)."""
    filters = LogFilter(call_id=call["id"], since=call["created_at"] - 1.0)
    return api.store.logs_after(call["app_id"], 0, 500, filters)


@rpc
async def CallReplay(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """``ketch call replay`` (remote) and the dashboard's Replay button: the call's inputs
    again, in a new ephemeral app of the spec that ran them; the new call's id at once."""
    limit = int(body.get("limit") or 10)
    info = CallReplaySpec(api, {"call_id": body["call_id"], "limit": limit})
    return {"call_id": await replay_remote(api, info)}


async def call_handler(api: Api, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """Another RPC's handler, as the owner, on this machine: what it is given comes from
    the control plane itself (an archived spec's local paths were checked when its app was
    first created, by a client on this machine)."""
    owner = Caller("owner", peer_uid=os.getuid())
    args = (api, body, owner) if method in WANTS_CALLER else (api, body)
    reply = HANDLERS[method](*args)
    if asyncio.iscoroutine(reply):
        reply = await reply
    assert isinstance(reply, dict)
    return reply


async def replay_remote(api: Api, info: dict[str, Any]) -> str:
    """Start ``info``'s inputs (``CallReplaySpec``) in a new ephemeral app of its archived
    spec; the app stops once the call is done (or after an hour). Returns the call's id."""
    from .._ids import new_id

    made = await call_handler(
        api,
        "AppCreate",
        {
            "app_id": new_id("ap"),
            "name": f"replay-{info['call_id']}",
            "deployed": False,
            "functions": [info["spec"]],
        },
    )
    app_id = made["app_id"]
    function_id = made["function_ids"][info["spec"]["tag"]]
    inputs = [
        {
            "idx": i["idx"],
            **({"args": i["args"]} if i["args"] is not None else {"blob_id": i["blob_id"]}),
        }
        for i in info["inputs"]
    ]
    call_id = new_id("fc")
    body = {
        "call_id": call_id,
        "function_id": function_id,
        "kind": "map" if len(inputs) > 1 else "single",
        "params": info["params"],
        "method": info["method"],
        "inputs": inputs,
        "closed": True,
    }
    await call_handler(api, "CallCreate", body)

    async def tend() -> None:
        deadline, after = time.monotonic() + 3600, 0
        try:
            while time.monotonic() < deadline:
                api.store.heartbeat(app_id)
                rows, done = await api.d.wait_outputs(call_id, after, 10.0, 1000)
                if done:
                    break
                after = rows[-1]["seq"] if rows else after
                await asyncio.sleep(0)
        finally:
            await call_handler(api, "AppStop", {"app_id": app_id})

    from .._tasks import spawn

    spawn(tend(), name=f"replay {call_id}")
    return call_id


@rpc
def CallReplaySpec(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """What replaying a call takes: the spec it ran with (archived), its parameters and
    method, and its inputs' arguments as its caller sent them (pickled, unopened here)."""
    call = _call(api, str(body["call_id"]))
    spec = api.store.archived_spec(call["spec_hash"]) if call["spec_hash"] else None
    if spec is None:
        raise NotFoundError(
            f"the code version of {call['id']} is not kept (a call made before ketch kept "
            "them, or one of a function that no longer exists)"
        )
    limit = min(int(body.get("limit") or 10), MAX_LIST)
    inputs = [
        {"idx": r["idx"], "args": r["args"], "blob_id": r["blob_id"]}
        for r in api.store.call_inputs(call["id"], limit)
    ]
    if any(i["args"] is None and i["blob_id"] is None for i in inputs):
        raise NotFoundError(f"the arguments of {call['id']} are no longer kept")
    results = {
        r["idx"]: {"status": r["status"], **(unpack(r["detail"]) if r["detail"] else {})}
        for r in api.store.call_results(call["id"], limit)
    }
    return {
        "call_id": call["id"],
        "spec": unpack(spec),
        "version": call["spec_hash"],
        "params": call["params"],
        "method": call["method"],
        "inputs": inputs,
        "results": [results.get(i["idx"]) for i in inputs],
    }


def prune(d: Dispatcher) -> None:
    """Retention, hourly: container output older than ``log_retention_days``, and finished
    calls (arguments, results) older than ``call_retention_days``, go."""
    try:
        dropped = d.logs.prune(float(config.get("log_retention_days")))
        days = float(config.get("call_retention_days"))
        calls = d.store.prune_calls(time.time() - days * 86400.0)
    except Exception:
        logger.exception("pruning past retention failed")
        return
    if dropped or calls:
        logger.info("dropped %d log lines and %d calls past their retention", dropped, calls)
