"""Named durable objects (Dict, Queue, Secret, Volume): one registry, one set of RPCs.

Every object has an id (``di-…``, ``qu-…``, ``st-…``, ``vo-…``), a kind and,
unless it is ephemeral, a name unique within its kind. Kinds keep their data
in tables of their own and register a ``purge`` hook that deletes it.

RPCs: ``ObjectGet`` (``create_if_missing``), ``ObjectCreate``,
``ObjectEphemeral``, ``ObjectDelete``, ``ObjectList``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Column, Float, Index, String, Table, delete, select

from .._ids import new_id
from ..exception import AlreadyExistsError, InvalidError, NotFoundError
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from .api import Api

KINDS = {"dict": "di", "queue": "qu", "secret": "st", "volume": "vo"}
DISPLAY = {"dict": "Dict", "queue": "Queue", "secret": "Secret", "volume": "Volume"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

objects = Table(
    "objects",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("name", String),  # NULL for ephemeral objects
    Column("ephemeral", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Index("objects_kind_name", "kind", "name", unique=True),
)

# kind -> function(store, object_id) deleting the object's data (not committing).
PURGE: dict[str, Callable[[Store, str], None]] = {}
# object id -> kind, for the hot paths (ids are never reused; deletes evict).
_KINDS: dict[str, str] = {}


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise InvalidError(f"unknown object kind {kind!r}")
    return str(kind)


def check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidError(
            f"{DISPLAY[kind]} name {name!r} is invalid: use up to 64 letters, digits, '.', '-' "
            "or '_', starting with a letter or digit"
        )
    return name


def find(store: Store, kind: str, name: str) -> dict[str, Any] | None:
    row = (
        store.conn.execute(select(objects).where(objects.c.kind == kind, objects.c.name == name))
        .mappings()
        .first()
    )
    return dict(row) if row else None


def check(store: Store, object_id: str, kind: str) -> str:
    """``object_id`` if it names a live object of ``kind`` (cached after the first look)."""
    if _KINDS.get(object_id) == kind:
        return object_id
    get(store, object_id, kind)
    _KINDS[object_id] = kind
    return object_id


def get(store: Store, object_id: str, kind: str | None = None) -> dict[str, Any]:
    row = store.conn.execute(select(objects).where(objects.c.id == object_id)).mappings().first()
    if row is None or (kind is not None and row["kind"] != kind):
        what = DISPLAY.get(kind or "", "object")
        raise NotFoundError(f"{what} {object_id!r} does not exist (was it deleted?)")
    return dict(row)


def create(store: Store, kind: str, name: str | None, ephemeral: bool = False) -> str:
    object_id = new_id(KINDS[kind])
    store.conn.execute(
        store.insert(objects)
        .values(id=object_id, kind=kind, name=name, ephemeral=ephemeral, created_at=time.time())
        .on_conflict_do_nothing()
    )
    store.conn.commit()
    if name is not None:
        row = find(store, kind, name)
        assert row is not None
        return str(row["id"])
    return object_id


def remove(store: Store, object_id: str) -> None:
    row = get(store, object_id)
    purge = PURGE.get(row["kind"])
    if purge is not None:
        purge(store, object_id)
    store.conn.execute(delete(objects).where(objects.c.id == object_id))
    store.conn.commit()
    _KINDS.pop(object_id, None)


@rpc
async def ObjectGet(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    kind = check_kind(body.get("kind"))
    name = check_name(kind, body.get("name"))
    row = find(api.store, kind, name)
    if row is None:
        if not body.get("create_if_missing"):
            raise NotFoundError(
                f"{DISPLAY[kind]} {name!r} not found: create it with `ketch {kind} create {name}` "
                f"or ketch.{DISPLAY[kind]}.from_name({name!r}, create_if_missing=True)"
            )
        return {"object_id": create(api.store, kind, name), "created": True}
    return {"object_id": row["id"], "created": False}


@rpc
async def ObjectCreate(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    kind = check_kind(body.get("kind"))
    name = check_name(kind, body.get("name"))
    if find(api.store, kind, name) is not None:
        raise AlreadyExistsError(f"{DISPLAY[kind]} {name!r} already exists")
    return {"object_id": create(api.store, kind, name)}


@rpc
async def ObjectEphemeral(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    kind = check_kind(body.get("kind"))
    return {"object_id": create(api.store, kind, None, ephemeral=True)}


@rpc
async def ObjectDelete(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    kind = check_kind(body.get("kind"))
    if body.get("object_id"):
        object_id = get(api.store, str(body["object_id"]), kind)["id"]
    else:
        name = check_name(kind, body.get("name"))
        row = find(api.store, kind, name)
        if row is None:
            if body.get("allow_missing"):
                return {"deleted": False}
            raise NotFoundError(f"{DISPLAY[kind]} {name!r} not found")
        object_id = row["id"]
    remove(api.store, object_id)
    return {"deleted": True}


@rpc
async def ObjectList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    kind = check_kind(body.get("kind"))
    rows = (
        api.store.conn.execute(
            select(objects)
            .where(objects.c.kind == kind, objects.c.ephemeral.is_(False))
            .order_by(objects.c.created_at)
        )
        .mappings()
        .all()
    )
    return {
        "objects": [
            {"object_id": r["id"], "name": r["name"], "created_at": r["created_at"]} for r in rows
        ]
    }
