#!/usr/bin/env python
"""Toward internet scale, by simulation: ketch's scheduler against a simulated fleet.

Usage::

    .venv/bin/python benchmarks/scheduler_sim.py           # 1,000 nodes, 10,000 functions, 1,000,000 inputs
    .venv/bin/python benchmarks/scheduler_sim.py --quick   # a tenth of each

The real scheduler state machine (``ketch.server.scheduler.Pool``, one per
function: no clock, no I/O) is driven by a loop that plays the fleet. No
container runs: the loop answers each ``StartContainer`` by placing it on a
node (first fit, each node 8 GPUs and 64 CPU slots; a pool's ``room`` is the
free capacity of its kind, kept as counters), each ready container by a
``container_ready`` event, and each assigned input by its output.

Workload: half the functions want one GPU, half one CPU slot, each with
``max_containers=10``; every input arrives in one burst at t=0, spread evenly
over the functions (so each container has a queue behind it).

Phases, each timed on its own:

* burst: one ``enqueue`` event per function; the pools request the containers
  the fleet has room for. Its wall time is the time from the burst to every
  container requested.
* ready: every requested container reports ready; the pools assign inputs.
* steady: ready containers report outputs and get the next inputs, up to
  ``--outputs`` of them.

A decision is one event handled by a pool (with the actions it returns). The
scaling table runs the burst and ready phases with 10x fewer and 10x more
nodes and the same functions and inputs: the cost per decision should not grow
with the fleet.

Target (issue 17): a decision <= 50 us at 1,000 nodes x 8 GPUs, 10,000
functions and 1,000,000 queued inputs; cost no faster than linear in nodes.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for path in (str(BENCH_DIR), str(REPO / "src")):
    if path not in sys.path:
        sys.path.insert(0, path)

import _harness as h  # noqa: E402

from ketch.server import scheduler as sm  # noqa: E402

log = h.logger("scheduler")

GPUS_PER_NODE = 8
CPU_SLOTS_PER_NODE = 64
MAX_CONTAINERS = 10  # each function's max_containers: its inputs queue behind its containers


@dataclass
class Fleet:
    """Nodes with free GPUs and CPU slots; containers placed first fit, in O(1) amortized."""

    nodes: int
    free: dict[str, list[int]] = field(default_factory=dict)  # kind -> free per node
    cursor: dict[str, int] = field(default_factory=dict)  # first node that may have room
    left: dict[str, int] = field(default_factory=dict)  # kind -> free in all
    placed: dict[str, tuple[str, int]] = field(default_factory=dict)  # container -> (kind, node)

    def __post_init__(self) -> None:
        for kind, per_node in (("gpu", GPUS_PER_NODE), ("cpu", CPU_SLOTS_PER_NODE)):
            self.free[kind] = [per_node] * self.nodes
            self.cursor[kind] = 0
            self.left[kind] = per_node * self.nodes

    def room(self, kind: str) -> int:
        return self.left[kind]

    def place(self, container_id: str, kind: str) -> int:
        free, node = self.free[kind], self.cursor[kind]
        while free[node] == 0:
            node += 1
        free[node] -= 1
        self.cursor[kind] = node
        self.left[kind] -= 1
        self.placed[container_id] = (kind, node)
        return node


@dataclass
class Stats:
    events: int = 0
    actions: int = 0
    seconds: float = 0.0
    slowest: float = 0.0

    def add(self, took: float, actions: int) -> None:
        self.events += 1
        self.actions += actions
        self.seconds += took
        self.slowest = max(self.slowest, took)

    @property
    def us_per_event(self) -> float:
        return self.seconds / max(self.events, 1) * 1e6


class Simulation:
    def __init__(
        self, nodes: int, functions: int, inputs: int, max_containers: int = MAX_CONTAINERS
    ) -> None:
        self.fleet = Fleet(nodes)
        self.pools: list[sm.Pool] = []
        self.kind_of: list[str] = []
        ids = itertools.count()
        for f in range(functions):
            kind = "gpu" if f % 2 == 0 else "cpu"
            pool = sm.Pool(
                f"fn-{f}",
                sm.PoolPolicy(max_containers=max_containers),
                new_container_id=lambda: f"ct-{next(ids)}",
                room=lambda kind=kind: self.fleet.room(kind),
            )
            self.pools.append(pool)
            self.kind_of.append(kind)
        self.per_function = inputs // functions
        self.pool_of: dict[str, int] = {}
        self.starting: list[str] = []
        self.assigned: dict[str, list[int]] = {}  # container -> inputs it runs
        self.now = 0.0

    def _perform(self, index: int, actions: list[sm.Action]) -> None:
        for action in actions:
            if isinstance(action, sm.StartContainer):
                self.fleet.place(action.container_id, self.kind_of[index])
                self.pool_of[action.container_id] = index
                self.starting.append(action.container_id)
            elif isinstance(action, sm.Assign):
                self.assigned.setdefault(action.container_id, []).extend(action.input_ids)

    def _event(self, stats: Stats, index: int, call: object) -> None:
        started = time.perf_counter()
        actions = call()  # type: ignore[operator]
        stats.add(time.perf_counter() - started, len(actions))
        self._perform(index, actions)

    def burst(self) -> Stats:
        stats = Stats()
        next_id = 0
        for index, pool in enumerate(self.pools):
            batch = range(next_id, next_id + self.per_function)
            next_id += self.per_function
            self._event(stats, index, lambda p=pool, b=batch: p.enqueue(b, self.now))
        return stats

    def ready(self) -> Stats:
        stats = Stats()
        self.now += 1.0
        starting, self.starting = self.starting, []
        for container_id in starting:
            index = self.pool_of[container_id]
            pool = self.pools[index]
            self._event(stats, index, lambda p=pool, c=container_id: p.container_ready(c, self.now))
        return stats

    def steady(self, outputs: int) -> Stats:
        stats = Stats()
        done = 0
        while done < outputs and self.assigned:
            self.now += 0.5
            for container_id in list(self.assigned):
                running = self.assigned.pop(container_id)
                if not running:
                    continue
                index = self.pool_of[container_id]
                pool = self.pools[index]
                results = [(i, "success", 0.5) for i in running]
                self._event(
                    stats,
                    index,
                    lambda p=pool, c=container_id, r=results: p.container_outputs(c, r, self.now),
                )
                done += len(results)
                if done >= outputs:
                    break
        return stats


def _row(name: str, stats: Stats, wall: float) -> str:
    return (
        f"| {name} | {stats.events:,} | {stats.actions:,} | {stats.us_per_event:.1f} | "
        f"{stats.slowest * 1e3:.2f} | {wall:.2f} |"
    )


def _phases(
    nodes: int, functions: int, inputs: int, outputs: int
) -> list[tuple[str, Stats, float]]:
    sim = Simulation(nodes, functions, inputs)
    rows = []
    for name, run in (
        ("burst: enqueue, containers requested", sim.burst),
        ("ready: containers ready, inputs assigned", sim.ready),
        ("steady: outputs in, next inputs out", lambda: sim.steady(outputs)),
    ):
        started = time.perf_counter()
        stats = run()
        rows.append((name, stats, time.perf_counter() - started))
        if outputs == 0 and name.startswith("ready"):
            break
    return rows


def _one_pool(containers: int) -> Stats:
    """One CPU function with ``containers`` containers and a queue behind each: the cost
    of its events in the steady phase (a pool's events scan its containers)."""
    nodes = containers // CPU_SLOTS_PER_NODE + 1
    sim = Simulation(nodes, 2, containers * 20, max_containers=containers)
    sim.pools, sim.kind_of = sim.pools[1:], sim.kind_of[1:]  # the CPU one only
    sim.per_function = containers * 10
    sim.burst()
    sim.ready()
    return sim.steady(containers * 5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the fleet and the work")
    ap.add_argument("--outputs", type=int, default=200_000, help="outputs in the steady phase")
    args = ap.parse_args(argv)
    scale = 10 if args.quick else 1
    nodes, functions, inputs = 1000 // scale, 10_000 // scale, 1_000_000 // scale
    started = time.perf_counter()
    log(f"{nodes} nodes x {GPUS_PER_NODE} GPUs, {functions} functions, {inputs:,} inputs")
    main_rows = _phases(nodes, functions, inputs, args.outputs // scale)
    scaling = []
    for n in (nodes // 10, nodes, nodes * 10):
        log(f"scaling: {n} nodes")
        burst, ready = _phases(n, functions, inputs, 0)
        both = Stats(
            burst[1].events + ready[1].events,
            burst[1].actions + ready[1].actions,
            burst[1].seconds + ready[1].seconds,
            max(burst[1].slowest, ready[1].slowest),
        )
        scaling.append((n, both, burst[2]))
    per_pool = []
    for containers in (10, 100, 1000, 10_000 // scale):
        log(f"one pool of {containers} containers")
        per_pool.append((containers, _one_pool(containers)))
    h.print_head(
        "Scheduler at fleet scale, simulated",
        args.quick,
        h.machine_line(),
        time.perf_counter() - started,
    )
    print(
        f"{nodes:,} nodes x {GPUS_PER_NODE} GPUs and {CPU_SLOTS_PER_NODE} CPU slots, "
        f"{functions:,} functions (half GPU), {inputs:,} inputs in one burst.\n"
    )
    print("| phase | decisions | actions | us per decision | slowest ms | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, stats, wall in main_rows:
        print(_row(name, stats, wall))
    print("\nScaling with the fleet (burst and ready phases; same functions and inputs):\n")
    print("| nodes | GPUs | containers requested | us per decision | burst to all requested, s |")  # noqa: E501
    print("|---:|---:|---:|---:|---:|")
    for n, stats, burst_wall in scaling:
        half = functions // 2 * MAX_CONTAINERS
        requested = min(n * GPUS_PER_NODE, half) + min(n * CPU_SLOTS_PER_NODE, half)
        print(
            f"| {n:,} | {n * GPUS_PER_NODE:,} | {requested:,} | {stats.us_per_event:.1f} | "
            f"{burst_wall:.2f} |"
        )
    print("\nOne function's pool, by its containers (steady phase):\n")
    print("| containers in the pool | decisions | us per decision |")
    print("|---:|---:|---:|")
    for containers, stats in per_pool:
        print(f"| {containers:,} | {stats.events:,} | {stats.us_per_event:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
