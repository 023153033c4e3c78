"""Usage and cost: every container metered at 100 ms granularity, per function and per
call, durable in the store; a rate card; budgets per app.

What a container is charged, for each stretch of its life (from its start request to
its exit, the total rounded up to the next 100 ms):

- **CPU**: core-seconds, the larger of its request (``cpu=``; 0.125 core by default)
  times the stretch and what its cgroup measured (the sandbox runtime);
- **memory**: GiB-seconds, the larger of its request (``memory=``; 128 MiB by default)
  and what its cgroup holds at the end of the stretch, times the stretch;
- **GPU**: seconds per GPU it holds, by type.

``cost = CPU core-s x cpu_core + memory GiB-s x memory_gib + GPU-s x gpu[type]``, from
the rate card: the defaults below (the seeds' prices), overridden by ``[rates]`` in
``KETCH_HOME/config.toml``::

    [rates]
    cpu_core = 0.00004      # $ per core-second
    memory_gib = 0.000002   # $ per GiB-second
    [rates.gpu]
    A100 = 0.0008           # $ per GPU-second

A call's share of a container is the time each of its inputs ran there, divided by the
inputs running there at once when it finished (a container running ``concurrent``
inputs is split fairly); idle and start-up time is the function's, not any call's.

A budget (``ketch app budget NAME 5/day``) stops new containers of the app once its
cost today (UTC) reaches it: the inputs waiting for one fail with
``BudgetExceededError``; running containers finish their inputs.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Float, Index, Integer, String, Table, func, select

from .._config import config
from .._spec import FunctionSpec
from ..exception import InvalidError, NotFoundError
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from .api import Api

GRANULARITY_S = 0.1
FLUSH_EVERY_S = 10.0
DEFAULT_CPU_CORES = 0.125
DEFAULT_MEMORY_GIB = 128 / 1024
GIB = float(1 << 30)

# $ per second (seeds: CPU core, memory GiB, A100; the other GPUs at Modal's list prices).
DEFAULT_RATES: dict[str, Any] = {
    "cpu_core": 0.000057,
    "memory_gib": 0.000003,
    "gpu": {
        "T4": 0.000164,
        "L4": 0.000222,
        "A10": 0.000306,
        "A10G": 0.000306,
        "L40S": 0.000542,
        "A100": 0.000933,
        "A100-40GB": 0.000933,
        "A100-80GB": 0.000933,
        "RTX-PRO-6000": 0.000542,
        "H100": 0.001097,
        "H100!": 0.001097,
        "H200": 0.001261,
        "B200": 0.001736,
        "ANY": 0.000164,
    },
}

usage = Table(
    "usage",
    metadata,
    Column("container_id", String, primary_key=True),
    Column("day", String, primary_key=True),  # YYYY-MM-DD, UTC
    Column("app_id", String, nullable=False),
    Column("function_id", String, nullable=False),
    Column("tag", String, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("cpu_s", Float, nullable=False),
    Column("mem_gib_s", Float, nullable=False),
    Column("gpu_s", Float, nullable=False),
    Column("gpu_type", String),
    Column("cost", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("usage_app_day", "app_id", "day"),
)

call_usage = Table(
    "call_usage",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("app_id", String, nullable=False),
    Column("function_id", String, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("cost", Float, nullable=False),
)

# Calls created per minute, by function: the dashboard's charts read these few rows rather
# than counting a million calls (written with the usage, every 10 s).
call_minutes = Table(
    "call_minutes",
    metadata,
    Column("function_id", String, primary_key=True),
    Column("minute", Integer, primary_key=True),  # Unix time // 60
    Column("app_id", String, nullable=False),
    Column("n", Integer, nullable=False),
    Index("call_minutes_app", "app_id", "minute"),
)

budgets = Table(
    "budgets",
    metadata,
    Column("app_name", String, primary_key=True),
    Column("usd_per_day", Float, nullable=False),
)

_SUMS = ("seconds", "cpu_s", "mem_gib_s", "gpu_s", "cost")


@dataclass(frozen=True)
class RateCard:
    cpu_core: float
    memory_gib: float
    gpu: dict[str, float]

    @classmethod
    def load(cls) -> RateCard:
        """The defaults, with ``[rates]`` of ``config.toml`` over them."""
        given = config._file_values().get("rates", {})
        gpu = dict(DEFAULT_RATES["gpu"])
        gpu.update({str(k).upper(): float(v) for k, v in dict(given.get("gpu", {})).items()})
        return cls(
            float(given.get("cpu_core", DEFAULT_RATES["cpu_core"])),
            float(given.get("memory_gib", DEFAULT_RATES["memory_gib"])),
            gpu,
        )

    def per_second(self, cores: float, gib: float, gpus: list[tuple[str, int]]) -> float:
        """$ a second of a container holding these costs."""
        return (
            cores * self.cpu_core
            + gib * self.memory_gib
            + sum(n * self.gpu.get(kind, self.gpu["ANY"]) for kind, n in gpus)
        )

    def describe(self) -> dict[str, Any]:
        return {"cpu_core": self.cpu_core, "memory_gib": self.memory_gib, "gpu": dict(self.gpu)}


@dataclass
class _Live:
    """A container being metered."""

    container_id: str
    app_id: str
    function_id: str
    tag: str
    cores: float
    gib: float
    gpus: list[tuple[str, int]]
    started: float  # wall clock
    billed: float = 0.0  # seconds charged so far
    cpu_seen: float | None = None  # cgroup CPU seconds at the last stretch's end


@dataclass
class _Pending:
    """Charges not yet written: per (container, day) and per call."""

    containers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, list[Any]] = field(default_factory=dict)  # call -> [app, fn, s, cost]
    minutes: dict[tuple[str, int], list[Any]] = field(default_factory=dict)  # -> [app, n]


def _day(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


def _request(spec: FunctionSpec) -> tuple[float, float, list[tuple[str, int]]]:
    cores = spec.cpu[0] if spec.cpu and spec.cpu[0] else DEFAULT_CPU_CORES
    gib = spec.memory[0] / 1024 if spec.memory and spec.memory[0] else DEFAULT_MEMORY_GIB
    gpus = [(str(o["type"]), int(o["count"])) for o in spec.gpu[:1]]  # the option it got
    return float(cores), float(gib), gpus


class Meter:
    """Meters containers; ``flush`` writes what they cost to the store."""

    def __init__(
        self,
        store: Store,
        usage_of: Callable[[str], tuple[float | None, int | None] | None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled  # off: nothing is metered (``observe = false``)
        self.store = store
        self.usage_of = usage_of  # the worker's cgroup readings, where it has them
        self.rates = RateCard.load()
        self.live: dict[str, _Live] = {}
        self.pending = _Pending()
        self._budgets: dict[str, float] | None = None

    # -- events ----------------------------------------------------------------
    def start(self, container_id: str, app_id: str, function_id: str, spec: FunctionSpec) -> None:
        if not self.enabled:
            return
        cores, gib, gpus = _request(spec)
        self.live[container_id] = _Live(
            container_id, app_id, function_id, spec.tag, cores, gib, gpus, time.time()
        )

    def call_made(self, app_id: str, function_id: str, now: float) -> None:
        """A call was created (counted per minute, for the dashboard)."""
        if not self.enabled:
            return
        key = (function_id, int(now // 60))
        entry = self.pending.minutes.get(key)
        if entry is None:
            self.pending.minutes[key] = [app_id, 1]
        else:
            entry[1] += 1

    def call_series(self, app_id: str, since_minute: int) -> dict[str, dict[int, int]]:
        """function id -> {minute: calls created}, from ``since_minute`` on (pending included)."""
        rows = self.store.conn.execute(
            select(call_minutes.c.function_id, call_minutes.c.minute, call_minutes.c.n).where(
                call_minutes.c.app_id == app_id, call_minutes.c.minute >= since_minute
            )
        ).all()
        out: dict[str, dict[int, int]] = {}
        for function_id, minute, n in rows:
            out.setdefault(function_id, {})[int(minute)] = int(n)
        for (function_id, minute), (app, n) in self.pending.minutes.items():
            if app == app_id and minute >= since_minute:
                series = out.setdefault(function_id, {})
                series[minute] = series.get(minute, 0) + n
        return out

    def input_done(self, container_id: str, call_id: str, seconds: float, sharing: int) -> None:
        """An input of ``call_id`` ran ``seconds`` on the container, ``sharing`` at once."""
        live = self.live.get(container_id)
        if live is None:
            return
        share = max(seconds, 0.0) / max(sharing, 1)
        cost = share * self.rates.per_second(live.cores, live.gib, live.gpus)
        entry = self.pending.calls.get(call_id)
        if entry is None:
            self.pending.calls[call_id] = [live.app_id, live.function_id, share, cost]
        else:
            entry[2] += share
            entry[3] += cost

    def stop(self, container_id: str) -> None:
        live = self.live.pop(container_id, None)
        if live is not None:
            self._charge(live, time.time(), final=True)

    # -- charging --------------------------------------------------------------
    def _charge(self, live: _Live, now: float, final: bool = False) -> None:
        total = now - live.started
        if final:  # the whole life, rounded up to the granularity
            total = math.ceil(max(total, 0.0) / GRANULARITY_S - 1e-9) * GRANULARITY_S
        stretch = total - live.billed
        if stretch <= 0:
            return
        live.billed = total
        cpu_s, gib = live.cores * stretch, live.gib
        measured = self.usage_of(live.container_id) if self.usage_of is not None else None
        if measured is not None:
            cpu_now, mem_now = measured
            if cpu_now is not None:
                if live.cpu_seen is not None:
                    cpu_s = max(cpu_s, cpu_now - live.cpu_seen)
                live.cpu_seen = cpu_now
            if mem_now is not None:
                gib = max(gib, mem_now / GIB)
        gpu_s = sum(n for _, n in live.gpus) * stretch
        cost = (
            cpu_s * self.rates.cpu_core
            + gib * stretch * self.rates.memory_gib
            + sum(n * stretch * self.rates.gpu.get(k, self.rates.gpu["ANY"]) for k, n in live.gpus)
        )
        key = (live.container_id, _day(now))
        row = self.pending.containers.get(key)
        if row is None:
            row = self.pending.containers[key] = {
                "container_id": live.container_id,
                "day": key[1],
                "app_id": live.app_id,
                "function_id": live.function_id,
                "tag": live.tag,
                "gpu_type": live.gpus[0][0] if live.gpus else None,
                **dict.fromkeys(_SUMS, 0.0),
            }
        row["seconds"] += stretch
        row["cpu_s"] += cpu_s
        row["mem_gib_s"] += gib * stretch
        row["gpu_s"] += gpu_s
        row["cost"] += cost

    def flush(self) -> None:
        """Charge every live container up to now and write what is pending."""
        now = time.time()
        for live in list(self.live.values()):
            self._charge(live, now)
        pending, self.pending = self.pending, _Pending()
        if not pending.containers and not pending.calls and not pending.minutes:
            return
        conn = self.store.conn
        for (function_id, minute), (app_id, n) in pending.minutes.items():
            stmt = self.store.insert(call_minutes).values(
                function_id=function_id, minute=minute, app_id=app_id, n=n
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["function_id", "minute"],
                    set_={"n": call_minutes.c.n + stmt.excluded.n},
                )
            )
        for row in pending.containers.values():
            stmt = self.store.insert(usage).values(**row, updated_at=now)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["container_id", "day"],
                    set_={k: getattr(usage.c, k) + getattr(stmt.excluded, k) for k in _SUMS}
                    | {"updated_at": stmt.excluded.updated_at},
                )
            )
        for call_id, (app_id, function_id, seconds, cost) in pending.calls.items():
            stmt = self.store.insert(call_usage).values(
                call_id=call_id, app_id=app_id, function_id=function_id, seconds=seconds, cost=cost
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["call_id"],
                    set_={
                        "seconds": call_usage.c.seconds + stmt.excluded.seconds,
                        "cost": call_usage.c.cost + stmt.excluded.cost,
                    },
                )
            )
        conn.commit()

    # -- reading ---------------------------------------------------------------
    def report(
        self,
        by: str,
        app_ids: list[str] | None = None,
        tag: str | None = None,
        since_day: str | None = None,
    ) -> list[dict[str, Any]]:
        """Sums of the usage table grouped ``by`` day, app, function or container."""
        self.flush()
        keys = {
            "day": [usage.c.day],
            "app": [usage.c.app_id],
            "function": [usage.c.app_id, usage.c.tag],
            "container": [usage.c.app_id, usage.c.tag, usage.c.container_id],
        }[by]
        sums = [func.sum(getattr(usage.c, k)).label(k) for k in _SUMS]
        q = select(*keys, *sums).group_by(*keys).order_by(*keys)
        if app_ids is not None:
            q = q.where(usage.c.app_id.in_(app_ids))
        if tag is not None:
            q = q.where(usage.c.tag == tag)
        if since_day is not None:
            q = q.where(usage.c.day >= since_day)
        return [dict(r) for r in self.store.conn.execute(q).mappings().all()]

    def call(self, call_id: str, flush: bool = True) -> dict[str, Any] | None:
        """The call's share of its containers (``flush``: pending charges written first)."""
        if flush:
            self.flush()
        row = (
            self.store.conn.execute(select(call_usage).where(call_usage.c.call_id == call_id))
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def cost_today(self, app_id: str) -> float:
        """The app's cost so far today (UTC), pending charges included."""
        day = _day(time.time())
        row = self.store.conn.execute(
            select(func.sum(usage.c.cost)).where(usage.c.app_id == app_id, usage.c.day == day)
        ).first()
        stored = float(row[0] or 0.0) if row else 0.0
        pending = sum(
            r["cost"]
            for (_, d), r in self.pending.containers.items()
            if d == day and r["app_id"] == app_id
        )
        now = time.time()
        running = sum(
            max(now - live.started - live.billed, 0.0)
            * self.rates.per_second(live.cores, live.gib, live.gpus)
            for live in self.live.values()
            if live.app_id == app_id
        )
        return float(stored + pending + running)

    # -- budgets ---------------------------------------------------------------
    def budget(self, app_name: str) -> float | None:
        if self._budgets is None:
            rows = self.store.conn.execute(select(budgets)).all()
            self._budgets = {r.app_name: float(r.usd_per_day) for r in rows}
        return self._budgets.get(app_name)

    def set_budget(self, app_name: str, usd_per_day: float | None) -> None:
        conn = self.store.conn
        conn.execute(budgets.delete().where(budgets.c.app_name == app_name))
        if usd_per_day is not None:
            conn.execute(budgets.insert().values(app_name=app_name, usd_per_day=usd_per_day))
        conn.commit()
        self._budgets = None

    def over_budget(self, app_id: str, app_name: str) -> str | None:
        """Why the app may start no container now, or None."""
        limit = self.budget(app_name)
        if limit is None:
            return None
        spent = self.cost_today(app_id)
        if spent < limit:
            return None
        return (
            f"app {app_name!r} is over its budget of ${limit:.2f}/day (spent ${spent:.4f} today, "
            f"UTC); no new containers start until tomorrow or `ketch app budget {app_name} "
            "--clear`"
        )


# -- RPCs (registered when ``api`` imports this module) -------------------------------


@rpc
def UsageReport(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """``ketch usage``: cost and resource-seconds grouped ``by`` day, app, function or
    container, for one app (by name: every app of that name) or all; or one call's share."""
    meter: Meter = api.d.meter
    if body.get("call_id"):
        return {"call": meter.call(str(body["call_id"])), "rates": meter.rates.describe()}
    by = str(body.get("by") or "app")
    if by not in ("day", "app", "function", "container"):
        raise InvalidError(f"by must be day, app, function or container, not {by!r}")
    app_ids = None
    if body.get("app"):
        name = str(body["app"])
        app_ids = [a["id"] for a in api.store.list_apps() if name in (a["name"], a["id"])]
        if not app_ids:
            raise NotFoundError(f"no app {name!r}")
    since = _day(float(body["since"])) if body.get("since") is not None else None
    rows = meter.report(by, app_ids, body.get("function") or None, since)
    names = {a["id"]: a["name"] for a in api.store.list_apps()}
    for row in rows:
        if "app_id" in row:
            row["app"] = names.get(row["app_id"], row["app_id"])
    return {"rows": rows, "rates": meter.rates.describe()}


@rpc
def AppBudgetSet(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """``ketch app budget NAME 5/day``: no new containers once today's cost reaches it."""
    name = str(body["name"])
    if api.store.find_app(name) is None:
        raise NotFoundError(f"no app {name!r}")
    limit = body.get("usd_per_day")
    if limit is not None and not (isinstance(limit, int | float) and 0 <= limit < 1e9):
        raise InvalidError(f"a budget is dollars a day, at least 0, not {limit!r}")
    api.d.meter.set_budget(name, None if limit is None else float(limit))
    return {"name": name, "usd_per_day": limit}
