"""``ketch.Queue`` on the control plane: FIFO partitions of pickled items, in SQLite.

A blocking ``get`` is a long poll: the request waits on the server until a
``put`` to its partition wakes it (no polling sleeps anywhere), or its wait
(at most 50 s per request; the client asks again until its own timeout) ends.
A partition expires ``partition_ttl`` seconds after its last put (Modal's
default: 24 hours for named partitions); the default partition never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    select,
)

from ..exception import InvalidError, PayloadTooLargeError
from . import objects
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from .api import Api

MAX_ITEM_BYTES = 64 * 1024 * 1024
MAX_ITEMS_PER_PARTITION = 100_000
MAX_WAIT_S = 50.0
DEFAULT_PARTITION_TTL_S = 24 * 3600.0

# One B-tree keyed by (queue, partition, seq): a put writes one page, where a rowid
# table with an index and AUTOINCREMENT wrote three. ``seq`` comes from a counter
# kept on the Store (the largest seq in the table at start, plus one per item),
# so it is never reused and FIFO order and ``iterate`` cursors hold.
queue_items = Table(
    "queue_entries",
    metadata,
    Column("object_id", String, primary_key=True),
    Column("partition", String, primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)

queue_partitions = Table(
    "queue_partitions",
    metadata,
    Column("object_id", String, primary_key=True),
    Column("partition", String, primary_key=True),
    Column("expires_at", Float),  # None: never
)

_waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
# Hot-path state: item counts per partition (loaded once, then kept up to date) and
# when each queue last looked for expired partitions.
_counts: dict[tuple[str, str], int] = {}
_expired_at: dict[str, float] = {}
EXPIRE_EVERY_S = 1.0
_INSERT = "INSERT INTO queue_entries (object_id, partition, seq, data) VALUES (?, ?, ?, ?)"
_TAKE = (
    "SELECT seq, data FROM queue_entries WHERE object_id = ? AND partition = ? ORDER BY seq LIMIT ?"
)
_DROP_TAKEN = "DELETE FROM queue_entries WHERE object_id = ? AND partition = ? AND seq <= ?"
_TOUCH = (
    "INSERT INTO queue_partitions (object_id, partition, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (object_id, partition) DO UPDATE SET expires_at = excluded.expires_at"
)


def _ready(store: Store) -> None:
    """Before a Store's first queue operation: move items of the older ``queue_items`` table
    over, and start the seq counter after the largest seq there is."""
    if getattr(store, "queue_seq", None) is None:
        db = store.db
        if (
            not store.postgres
            and db.execute(  # (a SQLite file made by an older ketch)
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'queue_items'"
            ).fetchone()
        ):
            db.execute(
                "INSERT INTO queue_entries (object_id, partition, seq, data) "
                "SELECT object_id, partition, seq, data FROM queue_items"
            )
            db.execute("DROP TABLE queue_items")
            store._commit()
        store.queue_seq = db.execute("SELECT max(seq) FROM queue_entries").fetchone()[0] or 0  # type: ignore[attr-defined]


def _next_seqs(store: Store, n: int) -> range:
    last: int = store.queue_seq  # type: ignore[attr-defined]
    store.queue_seq = last + n  # type: ignore[attr-defined]
    return range(last + 1, last + n + 1)


def _purge(store: Store, object_id: str, partition: str | None = None) -> None:
    _ready(store)
    for key in [k for k in _counts if k[0] == object_id and partition in (None, k[1])]:
        del _counts[key]
    for table in (queue_items, queue_partitions):
        q = delete(table).where(table.c.object_id == object_id)
        if partition is not None:
            q = q.where(table.c.partition == partition)
        store.conn.execute(q)


objects.PURGE["queue"] = _purge


def _partition(body: dict[str, Any]) -> str:
    partition = body.get("partition")
    if partition is None:
        return ""
    if not isinstance(partition, str) or not partition or len(partition) > 64:
        raise InvalidError(
            f"partition must be a non-empty string of at most 64 characters, got {partition!r}"
        )
    return partition


def _expire(store: Store, object_id: str) -> None:
    now = time.time()
    if now - _expired_at.get(object_id, 0.0) < EXPIRE_EVERY_S:
        return
    _expired_at[object_id] = now
    gone = (
        store.conn.execute(
            select(queue_partitions.c.partition).where(
                queue_partitions.c.object_id == object_id,
                queue_partitions.c.expires_at.is_not(None),
                queue_partitions.c.expires_at < now,
            )
        )
        .scalars()
        .all()
    )
    for partition in gone:
        _purge(store, object_id, partition)
    if gone:
        store.conn.commit()


def _partition_count(store: Store, object_id: str, partition: str) -> int:
    key = (object_id, partition)
    if key not in _counts:
        _counts[key] = _count(store, object_id, partition)
    return _counts[key]


def _count(store: Store, object_id: str, partition: str | None) -> int:
    q = select(func.count()).select_from(queue_items).where(queue_items.c.object_id == object_id)
    if partition is not None:
        q = q.where(queue_items.c.partition == partition)
    return int(store.conn.execute(q).scalar() or 0)


def _take(store: Store, object_id: str, partition: str, n: int) -> list[bytes]:
    if _counts.get((object_id, partition)) == 0:
        return []
    rows = store.db.execute(_TAKE, (object_id, partition, n)).fetchall()
    if rows:
        store.db.execute(_DROP_TAKEN, (object_id, partition, rows[-1][0]))
        store._commit()
        if (object_id, partition) in _counts:
            _counts[(object_id, partition)] -= len(rows)
    else:
        _counts[(object_id, partition)] = 0
    return [r[1] for r in rows]


def _wake(object_id: str, partition: str) -> None:
    for fut in _waiters.pop((object_id, partition), []):
        if not fut.done():
            fut.set_result(None)


async def _wait_and_take(
    store: Store, object_id: str, partition: str, n: int, deadline: float
) -> dict[str, Any]:
    """Wait for a put to ``partition`` (no polling) and take up to ``n`` items, until ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return {"items": []}
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _waiters.setdefault((object_id, partition), []).append(fut)
        try:
            await asyncio.wait_for(fut, left)
        except TimeoutError:
            return {"items": []}
        _expire(store, object_id)
        items = _take(store, object_id, partition, n)
        if items:
            return {"items": items}


@rpc
def QueuePut(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = objects.check(api.store, body["object_id"], "queue")
    _ready(api.store)
    partition = _partition(body)
    items = [bytes(x) for x in body["items"]]
    for item in items:
        if len(item) > MAX_ITEM_BYTES:
            raise PayloadTooLargeError(
                f"a Queue item is {len(item)} bytes pickled; the limit is {MAX_ITEM_BYTES // 2**20} MiB"
            )
    _expire(api.store, object_id)
    count = _partition_count(api.store, object_id, partition)
    if count + len(items) > MAX_ITEMS_PER_PARTITION:
        return {"full": True}
    ttl = body.get("partition_ttl")
    expires = None if partition == "" else time.time() + float(ttl or DEFAULT_PARTITION_TTL_S)
    db = api.store.db
    seqs = _next_seqs(api.store, len(items))
    if len(items) == 1:
        db.execute(_INSERT, (object_id, partition, seqs[0], items[0]))
    else:
        db.executemany(
            _INSERT,
            [(object_id, partition, seq, item) for seq, item in zip(seqs, items, strict=True)],
        )
    if partition or count == 0:  # named partitions refresh their TTL on every put
        db.execute(_TOUCH, (object_id, partition, expires))
    api.store._commit()
    _counts[(object_id, partition)] = count + len(items)
    _wake(object_id, partition)
    return {"full": False}


@rpc
def QueueGet(api: Api, body: dict[str, Any]) -> dict[str, Any] | Awaitable[dict[str, Any]]:
    """Up to ``n`` items; when there are none, a long poll of up to ``wait`` seconds."""
    object_id = objects.check(api.store, body["object_id"], "queue")
    _ready(api.store)
    partition = _partition(body)
    n = max(1, int(body.get("n", 1)))
    wait = min(max(float(body.get("wait", 0.0)), 0.0), MAX_WAIT_S)
    _expire(api.store, object_id)
    items = _take(api.store, object_id, partition, n)
    if items or wait <= 0:
        return {"items": items}
    return _wait_and_take(api.store, object_id, partition, n, time.monotonic() + wait)


@rpc
def QueueLen(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = objects.check(api.store, body["object_id"], "queue")
    _ready(api.store)
    _expire(api.store, object_id)
    partition = None if body.get("total") else _partition(body)
    return {"len": _count(api.store, object_id, partition)}


@rpc
def QueueClear(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    object_id = objects.check(api.store, body["object_id"], "queue")
    _ready(api.store)
    _purge(api.store, object_id, None if body.get("all") else _partition(body))
    api.store.conn.commit()
    return {}


@rpc
def QueuePeek(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Items after ``after`` (a seq) without removing them, for ``iterate`` and the CLI."""
    object_id = objects.check(api.store, body["object_id"], "queue")
    _ready(api.store)
    partition = _partition(body)
    _expire(api.store, object_id)
    rows = api.store.conn.execute(
        select(queue_items.c.seq, queue_items.c.data)
        .where(
            queue_items.c.object_id == object_id,
            queue_items.c.partition == partition,
            queue_items.c.seq > int(body.get("after", 0)),
        )
        .order_by(queue_items.c.seq)
        .limit(min(int(body.get("limit", 1000)), 1000))
    ).all()
    return {"items": [[r.seq, r.data] for r in rows]}
