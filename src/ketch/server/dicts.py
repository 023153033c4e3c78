"""``ketch.Dict`` on the control plane: pickled keys to pickled values, in SQLite.

Keys are identified by their pickled bytes (so ``1`` and ``"1"`` differ, as in
Modal); every write commits before the reply. RPCs take the dict's
``object_id`` and key/value bytes made by the client.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Float, LargeBinary, String, Table, delete, func, select

from ..exception import PayloadTooLargeError
from . import objects
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from .api import Api

MAX_ENTRY_BYTES = 64 * 1024 * 1024
PAGE = 1000

dict_entries = Table(
    "dict_entries",
    metadata,
    Column("object_id", String, primary_key=True),
    Column("key", LargeBinary, primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _purge(store: Store, object_id: str) -> None:
    store.conn.execute(delete(dict_entries).where(dict_entries.c.object_id == object_id))


objects.PURGE["dict"] = _purge


def _check_size(key: bytes, value: bytes) -> None:
    if len(key) + len(value) > MAX_ENTRY_BYTES:
        raise PayloadTooLargeError(
            f"a Dict entry is {len(key) + len(value)} bytes pickled; the limit is "
            f"{MAX_ENTRY_BYTES // 2**20} MiB per entry (put large data in a Volume)"
        )


# The hot paths use the raw DBAPI connection with fixed SQL (sqlite3 caches the statements).
_UPSERT = (
    "INSERT INTO dict_entries (object_id, key, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (object_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_INSERT_NEW = (
    "INSERT INTO dict_entries (object_id, key, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (object_id, key) DO NOTHING"
)
_SELECT = "SELECT value FROM dict_entries WHERE object_id = ? AND key = ?"
_DELETE = "DELETE FROM dict_entries WHERE object_id = ? AND key = ?"


def _put(store: Store, object_id: str, items: list[list[bytes]], skip_if_exists: bool) -> int:
    now = time.time()
    written = 0
    sql = _INSERT_NEW if skip_if_exists else _UPSERT
    for key, value in items:  # all checked before any is written: a put is whole or nothing
        _check_size(key, value)
    for key, value in items:
        written += store.db.execute(sql, (object_id, key, value, now)).rowcount or 0
    store._commit()
    return written


@rpc
def DictPut(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = objects.check(api.store, body["object_id"], "dict")
    items = [[bytes(k), bytes(v)] for k, v in body["items"]]
    written = _put(api.store, object_id, items, bool(body.get("skip_if_exists")))
    return {"written": written}


@rpc
def DictGet(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = objects.check(api.store, body["object_id"], "dict")
    key = bytes(body["key"])
    row = api.store.db.execute(_SELECT, (object_id, key)).fetchone()
    if body.get("pop") and row is not None:
        api.store.db.execute(_DELETE, (object_id, key))
        api.store._commit()
    return {"found": row is not None, "value": row[0] if row else None}


@rpc
def DictLen(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = objects.check(api.store, body["object_id"], "dict")
    q = select(func.count()).select_from(dict_entries).where(dict_entries.c.object_id == object_id)
    return {"len": int(api.store.conn.execute(q).scalar() or 0)}


@rpc
def DictScan(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """A page of entries in key order after ``after`` (keys, values, or both)."""
    object_id = objects.check(api.store, body["object_id"], "dict")
    q = select(dict_entries.c.key, dict_entries.c.value).where(
        dict_entries.c.object_id == object_id
    )
    if body.get("after") is not None:
        q = q.where(dict_entries.c.key > bytes(body["after"]))
    limit = min(int(body.get("limit", PAGE)), PAGE)
    rows = api.store.conn.execute(q.order_by(dict_entries.c.key).limit(limit)).all()
    return {"items": [[r.key, r.value] for r in rows], "more": len(rows) == limit}


@rpc
def DictClear(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = objects.check(api.store, body["object_id"], "dict")
    _purge(api.store, object_id)
    api.store.conn.commit()
    return {}
