#!/usr/bin/env python
"""What observing costs: usage metering and metrics, on and off, in one run.

Usage::

    .venv/bin/python benchmarks/observability.py            # 2 rounds of each
    .venv/bin/python benchmarks/observability.py --rounds 3

Each round runs ``benchmarks/core.py --only ketch`` (warm ``.remote()`` p50 over
sequential calls of a trivial function; ``.map`` throughput) against a fresh embedded
control plane, once with ``KETCH_OBSERVE=0`` (no metering, no metrics recorded) and
once with them on, alternating so that drift in the machine falls on both. The table
gives the median of the rounds for each, and the overhead of observing.

Target (issue 18): at most 5 % on the warm p50 and on map throughput.

``--calls N`` (default 1,000,000) also times what the dashboard's function page reads
from a store holding N calls of one app, each with an output, over the last 60 minutes
(calls per minute, latency percentiles, the 25 newest calls):
target 300 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def one(observe: bool, quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="ketch-obs-") as tmp:
        out = Path(tmp) / "core.json"
        argv = [sys.executable, str(BENCH / "core.py"), "--only", "ketch", "--json", str(out)]
        argv += ["--quick"] if quick else []
        env = {**os.environ, "KETCH_OBSERVE": "1" if observe else "0"}
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, timeout=900)
        results = json.loads(out.read_text())["results"]["ketch"]
    return {"p50_ms": results["warm"]["p50_ms"], "map_rate": results["map"]["rate"]}


def dashboard_reads(n: int) -> dict[str, float]:
    """Seconds of each read of the function page, against a SQLite store of ``n`` calls."""
    import time

    from ketch.server.store import Store
    from ketch.server.usage import Meter

    with tempfile.TemporaryDirectory(prefix="ketch-obs-db-") as tmp:
        store = Store(Path(tmp) / "state.db")
        now = time.time()
        step = 3600.0 / n
        calls = [
            (f"fc-{i:012d}", f"fu-{i % 4}", "ap-bench", "single", now - 3600 + i * step, "h")
            for i in range(n)
        ]
        outputs = [
            (c[0], 0, "failure" if i % 100 == 0 else "success", c[4] + 0.01)
            for i, c in enumerate(calls)
        ]
        store.db.executemany(
            "INSERT INTO calls (id, function_id, app_id, kind, created_at, spec_hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            calls,
        )
        store.db.executemany(
            "INSERT INTO outputs (call_id, idx, status, created_at) VALUES (?, ?, ?, ?)", outputs
        )
        minutes: dict[tuple[str, int], int] = {}
        for c in calls:
            key = (c[1], int(c[4] // 60))
            minutes[key] = minutes.get(key, 0) + 1
        store.db.executemany(
            "INSERT INTO call_minutes (function_id, minute, app_id, n) VALUES (?, ?, ?, ?)",
            [(f, m, "ap-bench", n) for (f, m), n in minutes.items()],
        )
        store.db.commit()
        since = now - 3600
        meter = Meter(store)
        timings = {}
        for name, read in (
            ("calls per minute", lambda: meter.call_series("ap-bench", int(since // 60))),
            ("latency (2,000 newest)", lambda: store.call_latencies("ap-bench", since, 2000)),
            ("25 newest calls", lambda: store.list_calls(["ap-bench"], None, False, 25)),
        ):
            t0 = time.perf_counter()
            read()
            timings[name] = time.perf_counter() - t0
        store.close()
    return timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="core.py's smoke sizes")
    ap.add_argument("--calls", type=int, default=1_000_000, help="calls in the dashboard's store")
    ap.add_argument("--dashboard-only", action="store_true", help="only the dashboard's reads")
    args = ap.parse_args()
    if args.calls:
        timings = dashboard_reads(args.calls)
        print(f"dashboard function page, {args.calls:,} calls stored (SQLite)")
        for name, seconds in timings.items():
            print(f"  {name:<28} {seconds * 1e3:>8.1f} ms")
        print(f"  {'all of them':<28} {sum(timings.values()) * 1e3:>8.1f} ms  (target 300 ms)\n")
    if args.dashboard_only:
        return 0
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.rounds):
        for observe in (False, True):
            runs[observe].append(one(observe, args.quick))
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("p50_ms", "map_rate")}
        for k, v in runs.items()
    }
    off, on = med[False], med[True]
    p50_cost = (on["p50_ms"] / off["p50_ms"] - 1) * 100
    map_cost = (1 - on["map_rate"] / off["map_rate"]) * 100
    print(f"observability overhead, median of {args.rounds} rounds each (core.py --only ketch)")
    print(f"{'case':<34} {'warm .remote() p50 (ms)':>24} {'.map (inputs/s)':>16}")
    print(f"{'observe off (KETCH_OBSERVE=0)':<34} {off['p50_ms']:>24.3f} {off['map_rate']:>16,.0f}")
    print(f"{'observe on (metering + metrics)':<34} {on['p50_ms']:>24.3f} {on['map_rate']:>16,.0f}")
    print(f"{'overhead':<34} {p50_cost:>23.1f}% {map_cost:>15.1f}%")
    print("\ntarget: <= 5 % on each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
