#!/usr/bin/env python
"""Queued inputs and the control plane's memory.

Usage::

    .venv/bin/python benchmarks/queue_memory.py             # 100,000 and 1,000,000 inputs
    .venv/bin/python benchmarks/queue_memory.py --quick     # 100,000
    .venv/bin/python benchmarks/queue_memory.py --ten-million  # and 10,000,000

A function with ``max_containers=1`` that sleeps is given N inputs at once
with ``spawn_map``: one runs, the rest wait in the queue. Measured on a fresh
control plane each time: how fast the inputs are enqueued, the control plane's
resident memory once they are all queued (``VmRSS``) and its peak (``VmHWM``),
its memory before (an idle control plane), and the state database's size;
then the control plane is killed (``kill -9``) with the queue full and started
again: how long until it serves, and its memory once it has read the queue back.
Beside it, in the same run: the same N small argument tuples held in a plain
Python list (the floor any in-memory queue pays), and the same N rows in a
fresh SQLite table (what the queue costs on disk).

Target (issue 17): memory that does not grow with queue length (<= 300 MB RSS
with 10,000,000 queued inputs), enqueueing >= 75,000 inputs/s. Past a pool's
window (``queue_window``, 50,000 inputs) queued inputs wait in the store only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402

log = h.logger("queue-memory")

MEASURE = r"""
import json, os, sys, time
import ketch

n = int(sys.argv[1])
app = ketch.App("bench-queue-memory")


@app.function(max_containers=1, timeout=3600)
def wait(x):
    time.sleep(3600)


def server_memory():
    pid = json.load(open(os.path.join(os.environ["KETCH_HOME"], "server.json")))["pid"]
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


import signal, subprocess

with app.run(show_logs=False):
    before = server_memory()
    t0 = time.perf_counter()
    wait.spawn_map(range(n))
    took = time.perf_counter() - t0
    after = server_memory()
    state = os.path.join(os.environ["KETCH_HOME"], "state.db")
    db = os.path.getsize(state) if os.path.exists(state) else 0  # (0: in PostgreSQL)
    # kill -9 with the queue full, then a restart: how long until it serves, and its memory.
    pid = json.load(open(os.path.join(os.environ["KETCH_HOME"], "server.json")))["pid"]
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.05)
    t0 = time.perf_counter()
    ketch_cli = os.path.join(os.path.dirname(sys.executable), "ketch")
    started = subprocess.run([ketch_cli, "server", "start"], capture_output=True, text=True)
    if started.returncode != 0:
        raise SystemExit(f"ketch server start: {started.stdout}{started.stderr}")
    restart = time.perf_counter() - t0
    recovered = server_memory()
out = {"before": before, "after": after, "seconds": took, "db": db, "restart": restart}
print("QUEUE " + json.dumps({**out, "recovered": recovered}))
"""


def _floor(n: int) -> tuple[float, float]:
    """MiB of N small argument tuples in a list, and of N rows in a fresh SQLite table."""
    probe = (
        "import resource, sys\n"
        "n = int(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "items = [((i,), {}) for i in range(n)]\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(n)], capture_output=True, text=True, check=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "q.db")
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, call TEXT, idx INTEGER, args BLOB)")
        conn.executemany(
            "INSERT INTO q (call, idx, args) VALUES (?, ?, ?)",
            ((f"fc-{'0' * 20}", i, b"\x92\x91\x00\x80" + i.to_bytes(4, "big")) for i in range(n)),
        )
        conn.commit()
        conn.close()
        size = os.path.getsize(path) / (1 << 20)
    return float(done.stdout.strip()), size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 inputs only")
    ap.add_argument(
        "--ten-million", action="store_true", help="also 10,000,000 (about 2 min, 1.2 GB of disk)"
    )
    ap.add_argument(
        "--database",
        default="",
        help="postgresql://...: the state in PostgreSQL (a fresh database)",
    )
    args = ap.parse_args(argv)
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    if args.ten_million:
        sizes.append(10_000_000)
    started = time.perf_counter()
    rows = []
    for n in sizes:
        home = Path(tempfile.mkdtemp(prefix="ketch-bench-qmem-", dir="/tmp"))
        env = {**h.ketch_env(home), "KETCH_RUNTIME": "local"}
        if args.database:
            env["KETCH_DATABASE"] = args.database
        try:
            log(f"ketch: {n:,} inputs queued behind one container")
            got = h.run_script(MEASURE, [str(n)], "QUEUE ", "queue trial", env, home, 1800)
        finally:
            h.stop_control_plane(env)
            shutil.rmtree(home, ignore_errors=True)
        listed, on_disk = _floor(n)
        rows.append((n, got, listed, on_disk))
    h.print_head(
        "Queued inputs: the control plane's memory",
        args.quick,
        h.machine_line(),
        time.perf_counter() - started,
    )
    print(
        "| queued inputs | enqueue, inputs/s | RSS idle, MiB | RSS queued, MiB | peak, MiB | "
        "bytes a queued input | state.db, MiB | floor: a Python list of the args, MiB | "
        "floor: the rows in SQLite, MiB | kill -9, restart until serving, s | "
        "RSS after the restart, MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, got, listed, on_disk in rows:
        per_input = (got["after"]["VmRSS"] - got["before"]["VmRSS"]) * (1 << 20) / n
        print(
            f"| {n:,} | {n / got['seconds']:,.0f} | {got['before']['VmRSS']:.0f} | "
            f"{got['after']['VmRSS']:.0f} | {got['after']['VmHWM']:.0f} | {per_input:,.0f} | "
            f"{got['db'] / (1 << 20):.0f} | {listed:.0f} | {on_disk:.0f} | "
            f"{got['restart']:.1f} | {got['recovered']['VmRSS']:.0f} |"
        )
    print(json.dumps({"rows": [[n, got] for n, got, _, _ in rows]}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
