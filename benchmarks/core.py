#!/usr/bin/env python
"""Core benchmark: ketch and Ray side by side, in one run, on one machine.

Usage::

    .venv/bin/python benchmarks/core.py            # full run (about 1-3 minutes)
    .venv/bin/python benchmarks/core.py --quick    # smoke run
    .venv/bin/python benchmarks/core.py --json out.json

Metrics (see ``benchmarks/README.md``):

1. warm ``.remote()`` round trip, p50 and p99, over sequential calls of the
   trivial ``f(x) -> x`` after a warm-up;
2. ``.map`` throughput over trivial inputs (inputs per second);
3. time to the first result of a fresh app: ketch in a fresh Python process,
   from just before ``with app.run():`` to the first ``f.remote(1)`` result
   (control plane already running); Ray from ``A.remote()`` (actor creation)
   to the first method result (Ray already initialized).

ketch runs first, against an embedded control plane in a throw-away
``KETCH_HOME``, and its control plane is stopped before Ray starts, so the two
never compete for the CPUs. Ray is started on 127.0.0.1 only, with its own
temporary directory, and shut down at the end. Processes this run started
(descendants of this process, or ones naming that ``KETCH_HOME`` / Ray
directory) that outlive the shutdown are reported and ended by pid.
``--timeout`` (default 600 s) interrupts a stuck run, cleans up the same way
and exits 124.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # run as a file from elsewhere, or with -P
    sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402

# Numbers quoted by the spec for orientation; the "target" column uses them.
TARGET_WARM_P50_MS = 1.0
TARGET_MAP_RATE = 10_000.0
SPEC_RAY_TASK_P50_MS = 1.6
SPEC_RAY_MAP_RATE = 1_500.0
SPEC_RAY_ACTOR_START_MS = 570.0


@dataclass(frozen=True)
class Sizes:
    warmup: int  # untimed calls before the latency loop
    calls: int  # timed sequential calls
    map_n: int  # inputs of the timed map
    fresh_runs: int  # fresh apps / fresh actors


FULL = Sizes(warmup=200, calls=2000, map_n=20_000, fresh_runs=5)
QUICK = Sizes(warmup=50, calls=200, map_n=2_000, fresh_runs=3)

SYSTEMS = ("ketch", "ray_task", "ray_actor")


# --------------------------------------------------------------------------
# small helpers


log = h.logger("core")


def timed_loop(call, n: int) -> list[float]:
    """Runs ``call(i)`` for i in range(n), checking the echo; seconds per call."""
    out: list[float] = []
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        got = call(i)
        t1 = clock()
        if got != i:
            raise AssertionError(f"call {i} returned {got!r}")
        out.append(t1 - t0)
    return out


def latency_summary(samples: list[float]) -> dict:
    return {
        "p50_ms": h.percentile(samples, 50) * 1e3,
        "p99_ms": h.percentile(samples, 99) * 1e3,
        "mean_ms": sum(samples) / len(samples) * 1e3,
        "n": len(samples),
    }


def check_echo(results, n: int, what: str) -> None:
    results = list(results)
    if results != list(range(n)):
        bad = next((i for i, r in enumerate(results) if r != i), len(results))
        raise AssertionError(f"{what}: {len(results)} results, first mismatch at {bad}")


class Cleanup(h.Cleanup):
    """Undoes the run (see ``_harness.Cleanup``): one control plane, in ``ketch_home``.

    The embedded control plane and Ray are started from this process, their
    containers and workers from them; processes that name this run's
    KETCH_HOME or Ray directory count as ours too.
    """

    cmdline_width = 120

    def __init__(self, workdir: Path, keep: bool) -> None:
        super().__init__(workdir, keep)
        self.ketch_home = workdir / "ketch-home"

    def ketch_env(self) -> dict[str, str]:
        return h.ketch_env(self.ketch_home)

    def markers(self) -> list[Path]:
        return [self.ketch_home, self.ray_dir]

    def stop_ketch_all(self) -> list[str]:
        return h.stop_control_plane(self.ketch_env())


# --------------------------------------------------------------------------
# ketch

# Runs in a fresh interpreter: one fresh ephemeral app, one call.
FRESH_APP_SCRIPT = r"""
import json, sys, time
t_start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import _core_app as m
t_imported = time.perf_counter()
with m.app.run():
    x = m.f.remote(1)
    t_first = time.perf_counter()
t_exited = time.perf_counter()
assert x == 1, x
print("KETCH_FRESH " + json.dumps({
    "import_s": t_imported - t_start,
    "first_result_s": t_first - t_imported,
    "exit_s": t_exited - t_first,
}), flush=True)
"""


def _ensure_ketch_importable(notes: list[str]) -> None:
    """Falls back to the checkout's ``src/`` when ketch is not installed."""
    import importlib.util

    if importlib.util.find_spec("ketch") is not None:
        return
    src = BENCH_DIR.parent / "src"
    if not (src / "ketch" / "__init__.py").is_file():
        return  # the import below raises the real error
    h.prepend_path(src)
    notes.append(f"ketch is not installed; used {src} via PYTHONPATH")


def run_ketch(sizes: Sizes, cleanup: Cleanup, results: dict, notes: list[str]) -> None:
    os.environ["KETCH_HOME"] = str(cleanup.ketch_home)
    os.environ.pop("KETCH_SERVER_URL", None)
    _ensure_ketch_importable(notes)

    t0 = time.perf_counter()
    import _core_app as m  # imports ketch

    notes.append(
        f"ketch: `import ketch` + workload module took {(time.perf_counter() - t0) * 1e3:.0f} ms"
    )

    log("ketch: starting app (auto-starts the control plane)")
    t0 = time.perf_counter()
    with m.app.run():
        first = m.f.remote(-1)
        t_first = time.perf_counter() - t0
        assert first == -1, first
        notes.append(
            "ketch: first app of the run (control plane start + app + cold container + call): "
            f"{t_first * 1e3:.0f} ms"
        )

        log(f"ketch: warm latency, {sizes.warmup} warm-up + {sizes.calls} timed calls")
        timed_loop(m.f.remote, sizes.warmup)
        lat = latency_summary(timed_loop(m.f.remote, sizes.calls))
        results["ketch"]["warm"] = lat

        log(f"ketch: map over {sizes.map_n} inputs")
        check_echo(m.f.map(range(100)), 100, "ketch warm-up map")
        t0 = time.perf_counter()
        out = list(m.f.map(range(sizes.map_n)))
        elapsed = time.perf_counter() - t0
        check_echo(out, sizes.map_n, "ketch map")
        results["ketch"]["map"] = {
            "n": sizes.map_n,
            "seconds": elapsed,
            "rate": sizes.map_n / elapsed,
        }

    log(f"ketch: {sizes.fresh_runs} fresh apps, each in a fresh process")
    runs = [
        h.run_script(
            FRESH_APP_SCRIPT,
            [str(BENCH_DIR)],
            "KETCH_FRESH ",
            f"fresh-app run {i}",
            cleanup.ketch_env(),
            cleanup.workdir,
            timeout=120,
        )
        for i in range(sizes.fresh_runs)
    ]
    firsts = [r["first_result_s"] for r in runs]
    results["ketch"]["fresh"] = {
        "p50_ms": h.percentile(firsts, 50) * 1e3,
        "samples_ms": [x * 1e3 for x in firsts],
        "import_p50_ms": h.percentile([r["import_s"] for r in runs], 50) * 1e3,
        "exit_p50_ms": h.percentile([r["exit_s"] for r in runs], 50) * 1e3,
    }
    notes.append(
        "ketch: fresh process also spent p50 "
        f"{results['ketch']['fresh']['import_p50_ms']:.0f} ms importing ketch + the module "
        f"(not counted) and {results['ketch']['fresh']['exit_p50_ms']:.0f} ms leaving "
        "`app.run()` (not counted)"
    )


# --------------------------------------------------------------------------
# Ray


def run_ray(sizes: Sizes, cleanup: Cleanup, results: dict, notes: list[str]) -> None:
    import_s, init_s = h.start_ray(cleanup, log)
    import ray

    notes.append(f"ray {ray.__version__}: `import ray` took {import_s * 1e3:.0f} ms")
    notes.append(f"ray: `ray.init()` took {init_s * 1e3:.0f} ms")

    @ray.remote
    def f(x):
        return x

    @ray.remote
    class Echo:
        def f(self, x):
            return x

    # -- tasks
    log(f"ray task: warm latency, {sizes.warmup} warm-up + {sizes.calls} timed calls")

    def task_call(i):
        return ray.get(f.remote(i))

    timed_loop(task_call, sizes.warmup)
    results["ray_task"]["warm"] = latency_summary(timed_loop(task_call, sizes.calls))

    log(f"ray task: map over {sizes.map_n} inputs")
    check_echo(ray.get([f.remote(i) for i in range(100)]), 100, "ray task warm-up map")
    t0 = time.perf_counter()
    out = ray.get([f.remote(i) for i in range(sizes.map_n)])
    elapsed = time.perf_counter() - t0
    check_echo(out, sizes.map_n, "ray task map")
    results["ray_task"]["map"] = {
        "n": sizes.map_n,
        "seconds": elapsed,
        "rate": sizes.map_n / elapsed,
    }

    # -- actor
    log(f"ray actor: warm latency, {sizes.warmup} warm-up + {sizes.calls} timed calls")
    actor = Echo.remote()

    def actor_call(i):
        return ray.get(actor.f.remote(i))

    timed_loop(actor_call, sizes.warmup)
    results["ray_actor"]["warm"] = latency_summary(timed_loop(actor_call, sizes.calls))

    log(f"ray actor: map over {sizes.map_n} inputs")
    check_echo(ray.get([actor.f.remote(i) for i in range(100)]), 100, "ray actor warm-up map")
    t0 = time.perf_counter()
    out = ray.get([actor.f.remote(i) for i in range(sizes.map_n)])
    elapsed = time.perf_counter() - t0
    check_echo(out, sizes.map_n, "ray actor map")
    results["ray_actor"]["map"] = {
        "n": sizes.map_n,
        "seconds": elapsed,
        "rate": sizes.map_n / elapsed,
    }
    ray.kill(actor)

    # -- fresh actor: creation to first method result
    log(f"ray actor: {sizes.fresh_runs} fresh actors")
    firsts = []
    for _ in range(sizes.fresh_runs):
        time.sleep(0.5)  # let the previous actor's worker go away
        t0 = time.perf_counter()
        a = Echo.remote()
        got = ray.get(a.f.remote(1))
        firsts.append(time.perf_counter() - t0)
        assert got == 1, got
        ray.kill(a)
        del a
    results["ray_actor"]["fresh"] = {
        "p50_ms": h.percentile(firsts, 50) * 1e3,
        "samples_ms": [x * 1e3 for x in firsts],
    }


# --------------------------------------------------------------------------
# report


def _cell(results: dict, system: str, metric: str, key: str, fmt: str) -> str:
    entry = results[system].get(metric)
    if entry is None:
        err = results[system].get("error")
        return "error" if err else "—"
    return format(entry[key], fmt)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "met" if ok else "MISSED"


def render(results: dict, sizes: Sizes) -> str:
    k = results["ketch"]
    ra = results["ray_actor"]

    warm_ok = k["warm"]["p50_ms"] <= TARGET_WARM_P50_MS if "warm" in k else None
    map_ok = k["map"]["rate"] >= TARGET_MAP_RATE if "map" in k else None
    if "fresh" in k:
        bar = ra["fresh"]["p50_ms"] if "fresh" in ra else SPEC_RAY_ACTOR_START_MS
        fresh_ok = k["fresh"]["p50_ms"] < bar
    else:
        fresh_ok = None

    rows = [
        (
            f"warm `.remote()` p50, ms ({sizes.calls} calls)",
            _cell(results, "ketch", "warm", "p50_ms", ".3f"),
            _cell(results, "ray_task", "warm", "p50_ms", ".3f"),
            _cell(results, "ray_actor", "warm", "p50_ms", ".3f"),
            f"<= {TARGET_WARM_P50_MS:g} ms (Ray tasks ~{SPEC_RAY_TASK_P50_MS:g} ms): {_verdict(warm_ok)}",
        ),
        (
            f"warm `.remote()` p99, ms ({sizes.calls} calls)",
            _cell(results, "ketch", "warm", "p99_ms", ".3f"),
            _cell(results, "ray_task", "warm", "p99_ms", ".3f"),
            _cell(results, "ray_actor", "warm", "p99_ms", ".3f"),
            "—",
        ),
        (
            f"`.map` throughput, inputs/s ({sizes.map_n:,} inputs)",
            _cell(results, "ketch", "map", "rate", ",.0f"),
            _cell(results, "ray_task", "map", "rate", ",.0f"),
            _cell(results, "ray_actor", "map", "rate", ",.0f"),
            f">= {TARGET_MAP_RATE:,.0f}/s (Ray ~{SPEC_RAY_MAP_RATE:,.0f}/s): {_verdict(map_ok)}",
        ),
        (
            f"fresh app → first result p50, ms ({sizes.fresh_runs} runs)",
            _cell(results, "ketch", "fresh", "p50_ms", ",.0f"),
            "—",
            _cell(results, "ray_actor", "fresh", "p50_ms", ",.0f"),
            f"< Ray actor start (~{SPEC_RAY_ACTOR_START_MS:.0f} ms; this run's Ray actor column): "
            f"{_verdict(fresh_ok)}",
        ),
    ]
    header = ("metric", "ketch", "Ray task", "Ray actor", "target")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * 3 + ["---"]) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer calls and inputs")
    ap.add_argument("--only", choices=("ketch", "ray"), help="run one side only")
    h.add_run_options(ap, timeout=600.0, keep_help="keep the temporary KETCH_HOME / Ray dir")
    args = ap.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="ketch-bench-"))
    cleanup = Cleanup(workdir, keep=args.keep)
    watchdog = h.Watchdog(args.timeout, cleanup, log, gap=True)

    results: dict = {s: {} for s in SYSTEMS}
    notes: list[str] = []
    t_start = time.perf_counter()

    def body() -> None:
        if args.only in (None, "ketch"):
            try:
                run_ketch(sizes, cleanup, results, notes)
            except Exception as exc:  # noqa: BLE001 - report, then go on with Ray
                traceback.print_exc()
                results["ketch"]["error"] = f"{type(exc).__name__}: {exc}"
            # Stop ketch before Ray starts, so the two never share the CPUs.
            notes.extend(
                cleanup.stop_plane(
                    cleanup.stop_ketch_all,
                    "ketch process still running 10 s after `ketch server stop`",
                )
            )
        if args.only in (None, "ray"):
            try:
                run_ray(sizes, cleanup, results, notes)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                results["ray_task"]["error"] = results["ray_actor"]["error"] = (
                    f"{type(exc).__name__}: {exc}"
                )

    aborted = h.guarded(body, cleanup, watchdog, notes)

    total = time.perf_counter() - t_start
    machine = h.machine_line()
    h.print_head("ketch vs Ray, core metrics", args.quick, machine, total)
    print(render(results, sizes))
    print()
    for system in SYSTEMS:
        if "error" in results[system]:
            print(f"- {system} failed: {results[system]['error'].splitlines()[0][:300]}")
    for note in notes:
        print(f"- {note}")
    for system in ("ketch", "ray_actor"):
        fresh = results[system].get("fresh")
        if fresh:
            samples = ", ".join(f"{x:.0f}" for x in fresh["samples_ms"])
            print(f"- {system} fresh-start samples, ms: {samples}")

    if args.json:
        h.write_json(args.json, {"sizes": asdict(sizes)}, machine, total, results, notes)
    if aborted:
        return 124
    failed = any("error" in results[s] for s in SYSTEMS if args.only in (None, s.split("_")[0]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
