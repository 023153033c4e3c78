"""Versions of deployed apps: every ``ketch deploy`` records one, ``rollback`` redeploys one.

A version is the list of function specs a deploy sent, by app name (so the
history survives ``ketch app stop`` and a later deploy), with the time and a
short hash of the app's source. Making a version live is the same as a
deploy: functions whose spec changed get new containers while the running
ones finish their inputs (rolling), new calls go to the new containers.
``rollback`` records a new version with the old one's contents, as Modal
does, so the history only ever grows.

RPCs: ``AppHistory``, ``AppRollback``.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Float, Integer, LargeBinary, String, Table, func, select

from .._ids import new_id
from .._serialization import pack, unpack
from ..exception import InvalidError, NotFoundError
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from .api import Api
    from .auth import Caller

app_versions = Table(
    "app_versions",
    metadata,
    Column("name", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("app_id", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("source_hash", String, nullable=False),
    Column("functions", LargeBinary, nullable=False),  # msgpack: the function specs, on the wire
    Column("note", String),  # "rollback to v3", ...
)


def specs_hash(functions: list[dict[str, Any]]) -> str:
    """A short hash of what was deployed, when the client sent no source hash."""
    return hashlib.sha256(pack(functions)).hexdigest()[:8]


def record(
    store: Store,
    name: str,
    app_id: str,
    functions: list[dict[str, Any]],
    source_hash: str,
    note: str = "",
) -> int:
    """Record a new version of deployed app ``name``; its number."""
    last = store.conn.execute(
        select(func.max(app_versions.c.version)).where(app_versions.c.name == name)
    ).scalar()
    version = int(last or 0) + 1
    store.conn.execute(
        app_versions.insert().values(
            name=name,
            version=version,
            app_id=app_id,
            created_at=time.time(),
            source_hash=source_hash or specs_hash(functions),
            functions=pack(functions),
            note=note or None,
        )
    )
    store.conn.commit()
    return version


def latest(store: Store) -> dict[str, int]:
    """Deployed app name -> its newest version number."""
    q = select(app_versions.c.name, func.max(app_versions.c.version)).group_by(app_versions.c.name)
    return {name: int(v) for name, v in store.conn.execute(q).all()}


def history(store: Store, name: str) -> list[dict[str, Any]]:
    rows = (
        store.conn.execute(
            select(app_versions).where(app_versions.c.name == name).order_by(app_versions.c.version)
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


@rpc
def AppHistory(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    name = str(body["name"])
    rows = history(api.store, name)
    if not rows:
        raise NotFoundError(f"no deployed app {name!r} (deploy it with `ketch deploy`)")
    app = api.store.find_app(name, deployed_only=True)
    live = rows[-1]["version"] if app is not None and app["state"] == "running" else None
    return {
        "name": name,
        "live": live,
        "versions": [
            {
                "version": r["version"],
                "created_at": r["created_at"],
                "source_hash": r["source_hash"],
                "n_functions": len(unpack(r["functions"])),
                "note": r["note"] or "",
            }
            for r in rows
        ],
    }


def _rollback_target(name: str, rows: list[dict[str, Any]], wanted: Any) -> dict[str, Any]:
    """The version to roll back to: ``wanted``, or the one before the latest."""
    if wanted is None:
        if len(rows) < 2:
            raise InvalidError(f"app {name!r} has only one version; nothing to roll back to")
        return rows[-2]
    found = [r for r in rows if r["version"] == int(wanted)]
    if not found:
        raise NotFoundError(
            f"app {name!r} has no version {wanted} (versions 1-{rows[-1]['version']})"
        )
    return found[0]


@rpc
async def AppRollback(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """Deploy an earlier version again, as a new version (through AppCreate, like a deploy)."""
    # api imports this module at its end, so AppCreate is there by the time a call comes.
    from .api import AppCreate

    name = str(body["name"])
    rows = history(api.store, name)
    if not rows:
        raise NotFoundError(f"no deployed app {name!r} (deploy it with `ketch deploy`)")
    target = _rollback_target(name, rows, body.get("version"))
    reply = await AppCreate(
        api,
        {
            "app_id": new_id("ap"),  # AppCreate keeps the running app's id, if one runs
            "name": name,
            "deployed": True,
            "functions": unpack(target["functions"]),
            "source_hash": target["source_hash"],
            "note": f"rollback to v{target['version']}",
        },
        caller,  # its host paths are checked again, for this caller
    )
    return {**reply, "rolled_back_to": target["version"]}
