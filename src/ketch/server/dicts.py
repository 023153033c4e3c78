"""``ketch.Dict`` on the control plane: pickled keys to pickled values, in SQLite.

Keys are identified by their pickled bytes (so ``1`` and ``"1"`` differ, as in
Modal); every write commits before the reply. RPCs take the dict's
``object_id`` and key/value bytes made by the client.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Float, LargeBinary, String, Table, delete, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..exception import PayloadTooLargeError
from . import objects
from .store import Store, metadata

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


def _put(store: Store, object_id: str, items: list[list[bytes]], skip_if_exists: bool) -> int:
    import time

    now = time.time()
    written = 0
    for key, value in items:
        _check_size(key, value)
        stmt = sqlite_insert(dict_entries).values(object_id=object_id, key=key, value=value, updated_at=now)
        if skip_if_exists:
            result = store.conn.execute(stmt.on_conflict_do_nothing())
        else:
            result = store.conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["object_id", "key"],
                    set_={"value": stmt.excluded.value, "updated_at": now},
                )
            )
        written += result.rowcount or 0
    store.conn.commit()
    return written


def register(rpc: Any) -> None:
    @rpc
    async def DictPut(api: Any, body: dict[str, Any]) -> dict[str, Any]:
        object_id = objects.get(api.store, body["object_id"], "dict")["id"]
        items = [[bytes(k), bytes(v)] for k, v in body["items"]]
        written = _put(api.store, object_id, items, bool(body.get("skip_if_exists")))
        return {"written": written}

    @rpc
    async def DictGet(api: Any, body: dict[str, Any]) -> dict[str, Any]:
        object_id = objects.get(api.store, body["object_id"], "dict")["id"]
        q = select(dict_entries.c.value).where(
            dict_entries.c.object_id == object_id, dict_entries.c.key == bytes(body["key"])
        )
        value = api.store.conn.execute(q).scalar()
        if body.get("pop") and value is not None:
            api.store.conn.execute(
                delete(dict_entries).where(
                    dict_entries.c.object_id == object_id, dict_entries.c.key == bytes(body["key"])
                )
            )
            api.store.conn.commit()
        return {"found": value is not None, "value": value}

    @rpc
    async def DictLen(api: Any, body: dict[str, Any]) -> dict[str, Any]:
        object_id = objects.get(api.store, body["object_id"], "dict")["id"]
        q = select(func.count()).select_from(dict_entries).where(dict_entries.c.object_id == object_id)
        return {"len": int(api.store.conn.execute(q).scalar() or 0)}

    @rpc
    async def DictScan(api: Any, body: dict[str, Any]) -> dict[str, Any]:
        """A page of entries in key order after ``after`` (keys, values, or both)."""
        object_id = objects.get(api.store, body["object_id"], "dict")["id"]
        q = select(dict_entries.c.key, dict_entries.c.value).where(dict_entries.c.object_id == object_id)
        if body.get("after") is not None:
            q = q.where(dict_entries.c.key > bytes(body["after"]))
        limit = min(int(body.get("limit", PAGE)), PAGE)
        rows = api.store.conn.execute(q.order_by(dict_entries.c.key).limit(limit)).all()
        return {"items": [[r.key, r.value] for r in rows], "more": len(rows) == limit}

    @rpc
    async def DictClear(api: Any, body: dict[str, Any]) -> dict[str, Any]:
        object_id = objects.get(api.store, body["object_id"], "dict")["id"]
        _purge(api.store, object_id)
        api.store.conn.commit()
        return {}
