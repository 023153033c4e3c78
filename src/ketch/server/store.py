"""Durable state: SQLAlchemy Core over SQLite (WAL), or over PostgreSQL (psycopg).

Every write that a client is told about is committed before the reply. The
store is used from the control plane's event loop thread only; its calls are
short, so they run inline rather than hopping to a thread. The hot paths use
the connection's DBAPI with SQL both databases take (``?`` becomes ``%s`` for
psycopg); PostgreSQL needs a database that sorts text bytewise (C collation).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert


def _copy_text_inputs(rows: Sequence[tuple[str, int, bytes | None, str | None]]) -> bytes:
    """``(call_id, idx, args, blob_id)`` rows as lines of COPY's text format, state
    ``pending`` and no attempts: ``bytes.hex`` and one join instead of psycopg's
    per-value writer (the enqueue path of a 10,000,000-input map). Ids are ketch's own
    (letters, digits, dashes), so they need no escaping; ``args`` goes as bytea hex."""
    out = []
    checked = ""
    for call_id, idx, args, blob_id in rows:
        if call_id != checked:
            checked = _copy_id(call_id)
        arg = "\\N" if args is None else "\\\\x" + args.hex()
        blob = "\\N" if blob_id is None else _copy_id(blob_id)
        out.append(f"{call_id}\t{int(idx)}\t{arg}\t{blob}\tpending\t0\n")
    return "".join(out).encode()


def _copy_id(value: str) -> str:
    if not value.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"not an id: {value!r}")
    return value


@dataclass(frozen=True)
class LogFilter:
    """Which log lines ``ketch app logs`` asks for: a time range, text, a function (its
    tag), a call, a container."""

    since: float | None = None
    until: float | None = None
    search: str | None = None
    tag: str | None = None
    call_id: str | None = None
    container_id: str | None = None

    def sql(self, where: list[str], params: list[Any]) -> None:
        """Add its conditions (``?`` placeholders) to ``where`` and ``params``."""
        if self.since is not None:
            where.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append("ts < ?")
            params.append(self.until)
        for column, value in (
            ("tag", self.tag),
            ("call_id", self.call_id),
            ("container_id", self.container_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.search:
            escaped = (
                self.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            )
            where.append("LOWER(text) LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")


metadata = MetaData()

apps = Table(
    "apps",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("deployed", Boolean, nullable=False),
    Column("state", String, nullable=False),  # running | stopped
    Column("created_at", Float, nullable=False),
    Column("stopped_at", Float),
    Column("heartbeat_at", Float),
    Index("apps_name", "name"),
)

functions = Table(
    "functions",
    metadata,
    Column("id", String, primary_key=True),
    Column("app_id", String, nullable=False),
    Column("tag", String, nullable=False),
    Column("spec", LargeBinary, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    # A variant (``with_options``, ``with_concurrency``, ``with_batching``): the function it
    # derives from and its overrides (packed FunctionSpec fields); NULL for the app's own.
    Column("base_id", String),
    Column("options", LargeBinary),
)

calls = Table(
    "calls",
    metadata,
    Column("id", String, primary_key=True),
    Column("function_id", String, nullable=False),
    Column("app_id", String, nullable=False),
    Column("kind", String, nullable=False),  # single | map | gen | spawn | spawn_map
    Column("params", LargeBinary),
    Column("method", String),
    Column("n_inputs", Integer),  # known once the call is closed
    Column("created_at", Float, nullable=False),
    # The code that ran it: a key of ``spec_archive`` (``ketch call replay`` runs it again).
    Column("spec_hash", String),
    Index("calls_created", "created_at"),
    Index("calls_app_created", "app_id", "created_at"),
)

# Every function spec a call ran with, by a hash of its bytes: the code version of a call.
spec_archive = Table(
    "spec_archive",
    metadata,
    Column("hash", String, primary_key=True),
    Column("spec", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

inputs = Table(
    "inputs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("args", LargeBinary),
    Column("blob_id", String),
    Column("state", String, nullable=False),  # pending | done
    Column("attempts", Integer, nullable=False, default=0),
    Index("inputs_call_idx", "call_id", "idx", unique=True),
    Index("inputs_state", "state"),
)

outputs = Table(
    "outputs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("status", String, nullable=False),
    Column("data", LargeBinary),
    Column("blob_id", String),
    Column("gen_index", Integer),  # position of a generator item, for de-duplication after a retry
    Column("created_at", Float, nullable=False),
    # What the container saw, as text it made (never unpickled outside a container): the
    # arguments' and result's reprs, or the traceback (msgpack), for ``ketch call show``.
    Column("detail", LargeBinary),
    Index("outputs_call_seq", "call_id", "seq"),
    sqlite_autoincrement=True,
)

logs = Table(
    "logs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("app_id", String, nullable=False),
    Column("tag", String),
    Column("container_id", String),
    Column("stream", String, nullable=False),
    Column("text", Text, nullable=False),
    Column("ts", Float, nullable=False),
    Column("call_id", String),  # the call it belongs to, where that is known (``_call_of``)
    Index("logs_app_seq", "app_id", "seq"),
    Index("logs_ts", "ts"),
    sqlite_autoincrement=True,
)

CHECKPOINT_INTERVAL_S = 1.0
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # the WAL file is cut back to this after a checkpoint
WAL_RESTART_BYTES = 64 * 1024 * 1024


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


FINAL_STATUSES = ("success", "failure", "timeout", "crash", "cancelled", "init_failure")


POSTGRES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def _placeholders(sql: str) -> str:
    """SQLite's ``?`` parameters as psycopg's ``%s`` (ketch's SQL has no other ``?`` or ``%``)."""
    return sql.replace("?", "%s")


class _PostgresDb:
    """The raw-connection calls the store's hot paths make (sqlite3's), on psycopg."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self._conn.cursor()
        cur.execute(_placeholders(sql), tuple(params))
        return cur

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self._conn.cursor()
        cur.executemany(_placeholders(sql), list(rows))
        return cur

    def copy_text(self, sql: str, data: bytes) -> None:
        """``COPY ... FROM STDIN`` of ``data``, already in COPY's text format."""
        with self._conn.cursor() as cur, cur.copy(sql) as copy:
            copy.write(data)

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()


class Store:
    """All reads and writes of durable state: a SQLite file, or a PostgreSQL database."""

    def __init__(self, path: Path | str) -> None:
        url = str(path)
        self.postgres = url.startswith(POSTGRES)
        if self.postgres:
            self._open_postgres(url)
            return
        self.engine = create_engine(f"sqlite:///{path}")

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of this process (kill -9); only
            # a power loss can drop the newest commits.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")
            # Checkpoints (which fsync) run on a thread of their own, off the call path.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            cur.close()

        metadata.create_all(self.engine)
        self._add_missing_columns()
        self.conn = self.engine.connect()
        self.db: Any = self.conn.connection.dbapi_connection
        self._path = path
        self._wal = Path(f"{path}-wal")
        self._commits = 0
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = threading.Thread(
            target=self._checkpoint_loop, name="wal-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _open_postgres(self, url: str) -> None:
        """The same tables in PostgreSQL (psycopg); its text must sort bytewise (C)."""
        driver = "postgresql+psycopg://" + url.split("://", 1)[1]
        self.engine = create_engine(driver)
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT datcollate, datlocprovider FROM pg_database "
                "WHERE datname = current_database()"
            ).first()
        collation, provider = (row[0], row[1]) if row is not None else ("", "")
        if provider == "i":  # ICU collations never sort bytewise
            collation = "an ICU collation"
        if collation not in ("C", "POSIX", "C.UTF-8", "C.utf8"):
            raise RuntimeError(
                f"the PostgreSQL database sorts text by {collation!r}; ketch needs bytewise "
                "order (Volume paths): create it with `createdb --locale=C --template=template0`"
            )
        metadata.create_all(self.engine)
        self._add_missing_columns()
        self.conn = self.engine.connect()
        self.db = _PostgresDb(self.conn.connection.dbapi_connection)
        self._commits = 0
        self._checkpointer = None

    def describe(self) -> str:
        """Where the state is, for ``ketch server status`` (no password)."""
        url = self.engine.url
        if self.postgres:
            host = url.host or f"socket in {url.query.get('host', '(default)')}"
            port = url.port or url.query.get("port") or 5432
            return f"PostgreSQL {host}:{port}/{url.database} (user {url.username})"
        return f"SQLite {url.database}"

    def insert(self, table: Table) -> Any:
        """An INSERT with ``on_conflict_do_update``/``do_nothing``, in this database's dialect."""
        return postgres_insert(table) if self.postgres else sqlite_insert(table)

    def rollback(self) -> None:
        """After a failed statement (PostgreSQL refuses the rest of the transaction)."""
        self.db.rollback()

    def _commit(self) -> None:
        """Commit, and now and then rewind the WAL.

        The checkpoint thread copies WAL pages into the database in the
        background, but under a steady stream of writes it never catches the
        last frames, and the WAL can only start over once it has. So every
        few hundred commits, if the WAL has grown past a limit, the writer
        finishes the (by then short) checkpoint itself.
        """
        self.db.commit()
        self._commits += 1
        if self.postgres:
            return
        if self._commits % 256 == 0 and _size(self._wal) > WAL_RESTART_BYTES:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _add_missing_columns(self) -> None:
        """Bring a state directory made by an older ketch up to date (additive changes only)."""
        found = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                have = {c["name"] for c in found.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in have:
                        kind = column.type.compile(dialect=self.engine.dialect)
                        conn.exec_driver_sql(
                            f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
                        )

    def _checkpoint_loop(self) -> None:
        conn = sqlite3.connect(self._path, timeout=5.0)
        try:
            while not self._closing.wait(CHECKPOINT_INTERVAL_S):
                # fetchall: an unread result would keep a read snapshot open and
                # stop the WAL from ever being rewound.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.conn.close()
        if self._checkpointer is not None:
            self._closing.set()
            self._checkpointer.join(timeout=10)
        self.engine.dispose()

    # -- apps and functions -------------------------------------------------
    def create_app(
        self, app_id: str, name: str, deployed: bool, fns: Sequence[dict[str, Any]]
    ) -> None:
        now = time.time()
        c = self.conn
        c.execute(
            self.insert(apps)
            .values(
                id=app_id,
                name=name,
                deployed=deployed,
                state="running",
                created_at=now,
                heartbeat_at=now,
            )
            .on_conflict_do_nothing()
        )
        for fn in fns:
            stmt = self.insert(functions).values(
                id=fn["id"],
                app_id=app_id,
                tag=fn["tag"],
                spec=fn["spec"],
                version=1,
                created_at=now,
            )
            c.execute(
                stmt.on_conflict_do_update(
                    index_elements=["id"],
                    set_={
                        "spec": stmt.excluded.spec,
                        "version": functions.c.version + 1,
                        "app_id": app_id,
                    },
                )
            )
        c.commit()

    def set_app_state(self, app_id: str, state: str) -> None:
        values: dict[str, Any] = {"state": state}
        if state == "stopped":
            values["stopped_at"] = time.time()
        self.conn.execute(update(apps).where(apps.c.id == app_id).values(**values))
        self.conn.commit()

    def heartbeat(self, app_id: str) -> None:
        self.conn.execute(update(apps).where(apps.c.id == app_id).values(heartbeat_at=time.time()))
        self.conn.commit()

    def get_app(self, app_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(apps).where(apps.c.id == app_id)).mappings().first()
        return dict(row) if row else None

    def find_app(self, name: str, deployed_only: bool = False) -> dict[str, Any] | None:
        """The app called ``name``: a running one before a stopped one, a deployed one
        before an ephemeral one of the same name, then the newest."""
        q = select(apps).where(apps.c.name == name)
        if deployed_only:
            q = q.where(apps.c.deployed.is_(True))
        order = (
            (apps.c.state == "running").desc(),
            apps.c.deployed.desc(),
            apps.c.created_at.desc(),
        )
        row = self.conn.execute(q.order_by(*order)).mappings().first()
        return dict(row) if row else None

    def list_apps(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(select(apps).order_by(apps.c.created_at)).mappings().all()
        return [dict(r) for r in rows]

    def app_functions(self, app_id: str) -> list[dict[str, Any]]:
        """The app's own functions and classes (not their ``with_options`` variants)."""
        q = select(functions).where(functions.c.app_id == app_id, functions.c.base_id.is_(None))
        return [dict(r) for r in self.conn.execute(q).mappings().all()]

    def function_variants(self, base_id: str) -> list[dict[str, Any]]:
        q = select(functions).where(functions.c.base_id == base_id)
        return [dict(r) for r in self.conn.execute(q).mappings().all()]

    def put_variant(
        self, variant_id: str, base: dict[str, Any], spec: bytes, options: bytes
    ) -> bool:
        """Record (or refresh) a variant of function row ``base``; True if its spec changed."""
        old = self.get_function(variant_id)
        if old is not None and old["spec"] == spec:
            return False
        stmt = self.insert(functions).values(
            id=variant_id,
            app_id=base["app_id"],
            tag=base["tag"],
            spec=spec,
            version=1,
            created_at=time.time(),
            base_id=base["id"],
            options=options,
        )
        self.conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["id"],
                set_={"spec": stmt.excluded.spec, "version": functions.c.version + 1},
            )
        )
        self.conn.commit()
        return old is not None

    def set_function_spec(self, function_id: str, spec: bytes) -> None:
        self.conn.execute(update(functions).where(functions.c.id == function_id).values(spec=spec))
        self.conn.commit()

    def get_function(self, function_id: str) -> dict[str, Any] | None:
        row = (
            self.conn.execute(select(functions).where(functions.c.id == function_id))
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def running_apps(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(select(apps).where(apps.c.state == "running")).mappings().all()
        return [dict(r) for r in rows]

    # -- calls, inputs, outputs ---------------------------------------------
    # The per-call path uses the DBAPI connection with plain, portable SQL: it
    # runs several times per call, and statement construction would dominate.
    def add_call(
        self, call: dict[str, Any], new_inputs: Sequence[dict[str, Any]], commit: bool = True
    ) -> list[tuple[int, int]]:
        """Insert a call (if new) and its inputs (skipping stored ones); return (id, idx) of new inputs.

        ``commit=False`` leaves the rows to the next commit on this connection:
        for a call whose client waits for the result, nothing has been promised
        yet, and a client whose request was lost sends it again.
        """
        self.db.execute(
            "INSERT INTO calls (id, function_id, app_id, kind, params, method, n_inputs, "
            "created_at, spec_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                call["id"],
                call["function_id"],
                call["app_id"],
                call["kind"],
                call["params"],
                call["method"],
                call["n_inputs"],
                time.time(),
                call.get("spec_hash"),
            ),
        )
        ids = self._insert_inputs(call["id"], new_inputs)
        if commit:
            self._commit()
        return ids

    def add_inputs(
        self, call_id: str, new_inputs: Sequence[dict[str, Any]], n_inputs: int | None
    ) -> list[tuple[int, int]]:
        ids = self._insert_inputs(call_id, new_inputs)
        if n_inputs is not None:
            self.db.execute("UPDATE calls SET n_inputs = ? WHERE id = ?", (n_inputs, call_id))
        self._commit()
        return ids

    def _insert_inputs(
        self, call_id: str, new_inputs: Sequence[dict[str, Any]]
    ) -> list[tuple[int, int]]:
        if not new_inputs:
            return []
        db = self.db
        if len(new_inputs) == 1:
            i = new_inputs[0]
            row = db.execute(
                "INSERT INTO inputs (call_id, idx, args, blob_id, state, attempts) "
                "VALUES (?, ?, ?, ?, 'pending', 0) ON CONFLICT DO NOTHING RETURNING id",
                (call_id, i["idx"], i.get("args"), i.get("blob_id")),
            ).fetchone()
            return [(int(row[0]), i["idx"])] if row is not None else []
        lo = min(i["idx"] for i in new_inputs)
        hi = max(i["idx"] for i in new_inputs)
        existing = {
            r[0]
            for r in db.execute(
                "SELECT idx FROM inputs WHERE call_id = ? AND idx BETWEEN ? AND ?",
                (call_id, lo, hi),
            )
        }
        fresh = [
            (call_id, i["idx"], i.get("args"), i.get("blob_id"))
            for i in new_inputs
            if i["idx"] not in existing
        ]
        if not fresh:
            return []
        if self.postgres:  # COPY: executemany is a round trip a row, arrays dump in Python
            db.copy_text(
                "COPY inputs (call_id, idx, args, blob_id, state, attempts) FROM STDIN",
                _copy_text_inputs(fresh),
            )
        else:
            db.executemany(
                "INSERT INTO inputs (call_id, idx, args, blob_id, state, attempts) "
                "VALUES (?, ?, ?, ?, 'pending', 0)",
                fresh,
            )
        wanted = {f[1] for f in fresh}
        rows = db.execute(
            "SELECT id, idx FROM inputs WHERE call_id = ? AND idx BETWEEN ? AND ? ORDER BY id",
            (call_id, lo, hi),
        ).fetchall()
        return [(r[0], r[1]) for r in rows if r[1] in wanted]

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT id, function_id, app_id, kind, params, method, n_inputs, created_at, "
            "spec_hash FROM calls WHERE id = ?",
            (call_id,),
        ).fetchone()
        if row is None:
            return None
        keys = (
            "id",
            "function_id",
            "app_id",
            "kind",
            "params",
            "method",
            "n_inputs",
            "created_at",
            "spec_hash",
        )
        return dict(zip(keys, row, strict=True))

    def archive_spec(self, spec_hash: str, spec: bytes) -> None:
        stmt = self.insert(spec_archive).values(hash=spec_hash, spec=spec, created_at=time.time())
        self.conn.execute(stmt.on_conflict_do_nothing())
        self.conn.commit()

    def archived_spec(self, spec_hash: str) -> bytes | None:
        row = self.conn.execute(
            select(spec_archive.c.spec).where(spec_archive.c.hash == spec_hash)
        ).first()
        return bytes(row[0]) if row else None

    def call_inputs(self, call_id: str, limit: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT idx, args, blob_id, state, attempts FROM inputs WHERE call_id = ? "
            "ORDER BY idx LIMIT ?",
            (call_id, limit),
        ).fetchall()
        keys = ("idx", "args", "blob_id", "state", "attempts")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def call_results(self, call_id: str, limit: int) -> list[dict[str, Any]]:
        """The final output of each input (not generator items), in input order."""
        marks = ", ".join("?" for _ in FINAL_STATUSES)
        rows = self.db.execute(
            "SELECT idx, status, data, blob_id, detail, created_at FROM outputs "
            f"WHERE call_id = ? AND status IN ({marks}) ORDER BY idx LIMIT ?",
            (call_id, *FINAL_STATUSES, limit),
        ).fetchall()
        keys = ("idx", "status", "data", "blob_id", "detail", "created_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def list_calls(
        self,
        app_ids: Sequence[str] | None,
        function_ids: Sequence[str] | None,
        failed: bool,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Newest first, with their outputs counted by status."""
        where: list[str] = []
        params: list[Any] = []
        if app_ids is not None:
            where.append(f"c.app_id IN ({', '.join('?' for _ in app_ids) or 'NULL'})")
            params.extend(app_ids)
        if function_ids is not None:
            where.append(f"c.function_id IN ({', '.join('?' for _ in function_ids) or 'NULL'})")
            params.extend(function_ids)
        if failed:
            where.append(
                "EXISTS (SELECT 1 FROM outputs o WHERE o.call_id = c.id AND o.status IN "
                "('failure', 'timeout', 'crash', 'init_failure'))"
            )
        rows = self.db.execute(
            "SELECT c.id, c.function_id, c.app_id, c.kind, c.method, c.n_inputs, c.created_at, "
            "(SELECT COUNT(*) FROM outputs o WHERE o.call_id = c.id AND o.status = 'success'), "
            "(SELECT COUNT(*) FROM outputs o WHERE o.call_id = c.id AND o.status IN "
            "('failure', 'timeout', 'crash', 'init_failure', 'cancelled')) "
            "FROM calls c"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY c.created_at DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        keys = (
            "call_id",
            "function_id",
            "app_id",
            "kind",
            "method",
            "n_inputs",
            "created_at",
            "succeeded",
            "failed",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def call_latencies(self, app_id: str, since: float, limit: int) -> dict[str, list[float]]:
        """function id -> seconds from a call's creation to its first successful output,
        for its newest ``limit`` calls since ``since``."""
        rows = self.db.execute(
            "SELECT c.function_id, MIN(o.created_at) - c.created_at FROM "
            "(SELECT id, function_id, created_at FROM calls WHERE app_id = ? AND created_at >= ? "
            "ORDER BY created_at DESC LIMIT ?) c JOIN outputs o ON o.call_id = c.id "
            "WHERE o.status = 'success' GROUP BY c.id, c.function_id, c.created_at",
            (app_id, since, limit),
        ).fetchall()
        out: dict[str, list[float]] = {}
        for function_id, seconds in rows:
            out.setdefault(function_id, []).append(max(float(seconds), 0.0))
        return out

    def prune_calls(self, before_ts: float) -> int:
        """Drop calls created before ``before_ts`` whose inputs are all done, with their
        inputs and outputs; returns how many calls went."""
        old = (
            "SELECT c.id FROM calls c WHERE c.created_at < ? AND NOT EXISTS "
            "(SELECT 1 FROM inputs i WHERE i.call_id = c.id AND i.state = 'pending')"
        )
        ids = [r[0] for r in self.db.execute(old, (before_ts,)).fetchall()]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for table in ("outputs", "inputs"):
                self.db.execute(f"DELETE FROM {table} WHERE call_id IN ({marks})", chunk)
            self.db.execute(f"DELETE FROM calls WHERE id IN ({marks})", chunk)
        self._commit()
        return len(ids)

    def input_args(self, input_id: int) -> tuple[bytes | None, str | None]:
        row = self.db.execute(
            "SELECT args, blob_id FROM inputs WHERE id = ?", (input_id,)
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def pending_input_ids(self) -> Iterator[tuple[int, str]]:
        """``(id, call_id)`` of every input without a final output, oldest first, one at a
        time, on a connection of its own (the recovery writes while this reads)."""
        with self.engine.connect() as reader:
            # stream_results: a server-side cursor on PostgreSQL (psycopg's client-side one
            # would fetch every row first); SQLite's cursor streams anyway.
            result = reader.execution_options(stream_results=True, max_row_buffer=10_000)
            rows = result.exec_driver_sql(
                "SELECT id, call_id FROM inputs WHERE state = 'pending' ORDER BY id"
            )
            for row in rows:
                yield int(row[0]), str(row[1])

    def record_outputs(self, rows: Sequence[dict[str, Any]], done_input_ids: Sequence[int]) -> None:
        """Store outputs and mark their inputs done, in one transaction."""
        db = self.db
        now = time.time()
        if rows:
            db.executemany(
                "INSERT INTO outputs (call_id, idx, status, data, blob_id, gen_index, created_at, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r["call_id"],
                        r["idx"],
                        r["status"],
                        r.get("data"),
                        r.get("blob_id"),
                        r.get("gen_index"),
                        now,
                        r.get("detail"),
                    )
                    for r in rows
                ],
            )
        if done_input_ids:
            # Arguments stay for ``call_retention_days`` (``ketch call replay``).
            db.executemany(
                "UPDATE inputs SET state = 'done' WHERE id = ?", [(i,) for i in done_input_ids]
            )
        self._commit()

    def record_attempt(self, input_id: int, attempts: int) -> None:
        self.db.execute("UPDATE inputs SET attempts = ? WHERE id = ?", (attempts, input_id))
        self._commit()

    def outputs_after(self, call_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT seq, idx, status, data, blob_id, gen_index FROM outputs WHERE call_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (call_id, after, limit),
        ).fetchall()
        keys = ("seq", "idx", "status", "data", "blob_id", "gen_index")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def count_final_outputs(self, call_id: str) -> int:
        marks = ", ".join("?" for _ in FINAL_STATUSES)
        row = self.db.execute(
            f"SELECT COUNT(*) FROM outputs WHERE call_id = ? AND status IN ({marks})",
            (call_id, *FINAL_STATUSES),
        ).fetchone()
        return int(row[0])

    def inputs_between(self, first: int, last: int) -> list[tuple[Any, ...]]:
        """``(id, call_id, idx, args, blob_id, attempts)`` of the pending inputs with ids
        ``first..last`` (a spilled range of one call, ``QueueWindow.refill``)."""
        rows = self.db.execute(
            "SELECT id, call_id, idx, args, blob_id, attempts FROM inputs "
            "WHERE id BETWEEN ? AND ? AND state = 'pending' ORDER BY id",
            (first, last),
        ).fetchall()
        return [tuple(r) for r in rows]

    def input_places(self, input_ids: Sequence[int]) -> list[tuple[int, str, int]]:
        """``(id, call_id, idx)`` of these inputs."""
        out: list[tuple[int, str, int]] = []
        ids = list(input_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = self.db.execute(
                f"SELECT id, call_id, idx FROM inputs WHERE id IN ({marks})", chunk
            ).fetchall()
            out += [(int(r[0]), str(r[1]), int(r[2])) for r in rows]
        return out

    def pending_input_ids_of_call(self, call_id: str) -> list[int]:
        q = select(inputs.c.id).where(inputs.c.call_id == call_id, inputs.c.state == "pending")
        return list(self.conn.execute(q).scalars())

    def pending_input_ids_of_app(self, app_id: str) -> list[int]:
        q = (
            select(inputs.c.id)
            .join(calls, calls.c.id == inputs.c.call_id)
            .where(calls.c.app_id == app_id, inputs.c.state == "pending")
        )
        return list(self.conn.execute(q).scalars())

    # -- logs -----------------------------------------------------------------
    def add_logs(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.db.executemany(
                "INSERT INTO logs (app_id, tag, container_id, stream, text, ts, call_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r["app_id"],
                        r["tag"],
                        r["container_id"],
                        r["stream"],
                        r["text"],
                        r["ts"],
                        r.get("call_id"),
                    )
                    for r in rows
                ],
            )
            self._commit()

    def logs_after(
        self,
        app_id: str,
        after: int,
        limit: int,
        filters: LogFilter | None = None,
        upto: int | None = None,
    ) -> list[dict[str, Any]]:
        where, params = ["app_id = ?", "seq > ?"], [app_id, after]
        if upto is not None:
            where.append("seq <= ?")
            params.append(upto)
        if filters is not None:
            filters.sql(where, params)
        rows = self.db.execute(
            "SELECT seq, ts, tag, container_id, stream, text, call_id FROM logs WHERE "
            + " AND ".join(where)
            + " ORDER BY seq LIMIT ?",
            (*params, limit),
        ).fetchall()
        keys = ("seq", "ts", "tag", "container_id", "stream", "text", "call_id")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def last_log_seq(self, app_id: str) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM logs WHERE app_id = ?", (app_id,)).fetchone()
        return int(row[0] or 0) if row else 0

    def prune_logs(self, before_ts: float) -> int:
        cur = self.db.execute("DELETE FROM logs WHERE ts < ?", (before_ts,))
        self._commit()
        return int(cur.rowcount or 0)
