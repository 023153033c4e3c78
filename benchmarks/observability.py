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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="core.py's smoke sizes")
    args = ap.parse_args()
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
