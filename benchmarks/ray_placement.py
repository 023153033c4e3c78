#!/usr/bin/env python
"""How ketch should place containers on Ray, by measurement (issue 17's decision).

Usage::

    .venv/bin/python benchmarks/ray_placement.py           # n=20
    .venv/bin/python benchmarks/ray_placement.py --quick   # n=5

Two ways for a ketch worker to live on a Ray node, each measured as what it
adds to starting one container (Ray on 127.0.0.1, 2 CPUs, in a fresh process):

* an actor per container: the container's resources are the actor's
  (``num_cpus=...``); Ray starts a worker process for each one. Measured: the
  actor's creation until its first method call returns.
* one ketch worker per node, and a placement group per container that reserves
  its resources (Ray accounts them and its autoscaler sees pending ones); the
  worker starts the container itself. Measured: ``placement_group([...])``
  until ``ready()``, and its removal; the same right after another's removal
  (the freed resources come back to Ray's scheduler after a delay); and 20 at
  once.

Beside them in the same run: a call to an already running actor (the floor of
asking a node to do anything).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402

log = h.logger("ray-placement")

MEASURE = r"""
import json, logging, sys, time
import ray
from ray.util.placement_group import placement_group, remove_placement_group

n, temp = int(sys.argv[1]), sys.argv[2]
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp,
         logging_level=logging.WARNING, log_to_driver=False)


@ray.remote(num_cpus=0.5)
class Container:
    def ping(self):
        return 1


out = {"actor": [], "pg_ready": [], "pg_remove": [], "pg_back_to_back": [], "call": []}
warm = Container.remote()
ray.get(warm.ping.remote())
for _ in range(n * 10):
    t0 = time.perf_counter()
    ray.get(warm.ping.remote())
    out["call"].append(time.perf_counter() - t0)
ray.kill(warm)
time.sleep(1)
for _ in range(n):
    t0 = time.perf_counter()
    a = Container.remote()
    ray.get(a.ping.remote())
    out["actor"].append(time.perf_counter() - t0)
    ray.kill(a)
    time.sleep(0.2)  # its worker goes before the next one starts
for pause, key in ((0.3, "pg_ready"), (0.0, "pg_back_to_back")):
    for _ in range(n):
        t0 = time.perf_counter()
        pg = placement_group([{"CPU": 0.5}])
        ray.get(pg.ready())
        out[key].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        remove_placement_group(pg)
        if pause:
            out["pg_remove"].append(time.perf_counter() - t0)
        time.sleep(pause)
time.sleep(1.0)
t0 = time.perf_counter()
pgs = [placement_group([{"CPU": 0.05}]) for _ in range(20)]
ray.get([pg.ready() for pg in pgs])
out["pg20"] = [time.perf_counter() - t0]
for pg in pgs:
    remove_placement_group(pg)
ray.shutdown()
print("RAY " + json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n=5 instead of 20")
    args = ap.parse_args(argv)
    n = 5 if args.quick else 20
    work = Path(tempfile.mkdtemp(prefix="ketch-bench-rayp-", dir="/tmp"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    started = time.perf_counter()
    log(f"ray: {n} actors, {n} placement groups, 20 at once")
    proc = subprocess.Popen(
        [sys.executable, "-c", MEASURE, str(n), str(work / "ray")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        try:  # whatever Ray left in the run's session
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    line = next((ln for ln in out.splitlines() if ln.startswith("RAY ")), None)
    if line is None:
        raise SystemExit(f"the Ray trial failed:\n{out[-2000:]}\n{err[-2000:]}")
    got = json.loads(line[4:])
    h.print_head(
        "Placing containers on Ray: an actor each, or a reservation each",
        args.quick,
        h.machine_line(),
        time.perf_counter() - started,
    )
    print("| what a container start costs on Ray | p50 ms | p90 ms | n |")
    print("|---|---:|---:|---:|")
    print(h.ms_row("an actor per container: create until its first call returns", got["actor"]))
    print(h.ms_row("a placement group per container: create until ready", got["pg_ready"]))
    print(h.ms_row("  ... and its removal", got["pg_remove"]))
    print(h.ms_row("  ... created right after another's removal", got["pg_back_to_back"]))
    print(h.ms_row("20 placement groups at once, all ready (wall)", got["pg20"]))
    print(h.ms_row("floor: a call to a running actor", got["call"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
