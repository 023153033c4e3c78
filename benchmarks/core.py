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
import contextlib
import faulthandler
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

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


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def log(msg: str) -> None:
    print(f"[core] {msg}", file=sys.stderr, flush=True)


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
        "p50_ms": percentile(samples, 50) * 1e3,
        "p99_ms": percentile(samples, 99) * 1e3,
        "mean_ms": sum(samples) / len(samples) * 1e3,
        "n": len(samples),
    }


def check_echo(results, n: int, what: str) -> None:
    results = list(results)
    if results != list(range(n)):
        bad = next((i for i, r in enumerate(results) if r != i), len(results))
        raise AssertionError(f"{what}: {len(results)} results, first mismatch at {bad}")


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, state) for every process in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the ")" that closes the command name: state, ppid, ..., starttime (22nd)
        rest = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(rest[1]), rest[19], rest[0])
    return table


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120]


class Cleanup:
    """Everything that must be undone, whatever happens (also from the watchdog).

    Processes are tracked two ways: the descendants of this process (the
    embedded control plane and Ray are started from here, their containers and
    workers from them), and any process whose command line or environment
    names this run's KETCH_HOME or Ray directory. Only those, by pid, are ever
    signalled; never this process or its ancestors.
    """

    def __init__(self, workdir: Path, keep: bool) -> None:
        self.workdir = workdir
        self.keep = keep
        self.ketch_home = workdir / "ketch-home"
        self.ray_dir = workdir / "ray"
        self.ray_started = False
        self._lock = threading.Lock()
        self._done = False

    def ketch_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KETCH_HOME"] = str(self.ketch_home)
        env.pop("KETCH_SERVER_URL", None)
        return env

    # -- processes

    def ours(self) -> dict[int, str]:
        """pid -> start time of the live processes this run started."""
        table = _proc_table()
        me = os.getpid()
        ancestors = set()
        pid = me
        while pid in table and pid not in ancestors:
            ancestors.add(pid)
            pid = table[pid][0]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        stack = list(children.get(me, []))
        while stack:
            pid = stack.pop()
            if pid not in found:
                found.add(pid)
                stack.extend(children.get(pid, []))
        markers = [str(self.ketch_home).encode(), str(self.ray_dir).encode()]
        for pid in table:
            if pid in ancestors or pid in found:
                continue
            blob = b""
            for part in ("cmdline", "environ"):
                try:
                    blob += Path(f"/proc/{pid}/{part}").read_bytes()
                except OSError:
                    pass
            if any(m in blob for m in markers):
                found.add(pid)
        return {pid: table[pid][1] for pid in found if table[pid][2] != "Z"}

    @staticmethod
    def still_alive(procs: dict[int, str]) -> dict[int, str]:
        table = _proc_table()
        return {
            pid: st
            for pid, st in procs.items()
            if pid in table and table[pid][1] == st and table[pid][2] != "Z"
        }

    def wait_gone(self, procs: dict[int, str], timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        alive = self.still_alive(procs)
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = self.still_alive(alive)
        return alive

    def end(self, procs: dict[int, str], why: str) -> list[str]:
        """SIGTERM, then SIGKILL, the given processes (pid + start time checked)."""
        notes = []
        alive = self.still_alive(procs)
        for pid in alive:
            notes.append(f"{why}; ended by pid: {pid} `{_cmdline(pid)}`")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        alive = self.wait_gone(alive, 5.0)
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return notes

    # -- services

    def stop_ketch(self) -> str | None:
        """``ketch server stop`` for our KETCH_HOME; returns a note on trouble."""
        if not self.ketch_home.exists():
            return None
        cli = Path(sys.executable).parent / "ketch"
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "ketch.cli.main"]
        try:
            proc = subprocess.run(
                [*cmd, "server", "stop"],
                env=self.ketch_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`ketch server stop` failed: {exc!r}"
        if proc.returncode != 0:
            return (
                f"`ketch server stop` exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        return None

    def stop_ray(self) -> None:
        if not self.ray_started:
            return
        self.ray_started = False
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def hard(self) -> list[str]:
        """Last resort (watchdog thread): ketch CLI stop, then our processes by pid."""
        notes = []
        procs = self.ours()
        note = self.stop_ketch()
        if note:
            notes.append(note)
        notes.extend(self.end(procs, "hard cleanup after timeout"))
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return notes

    def run(self) -> list[str]:
        with self._lock:
            if self._done:
                return []
            self._done = True
        notes = []
        procs = self.ours()
        note = self.stop_ketch()
        if note:
            notes.append(note)
        try:
            self.stop_ray()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            notes.append(f"ray.shutdown() failed: {exc!r}")
        left = self.wait_gone(procs, 10.0)
        notes.extend(self.end(left, "still running 10 s after shutdown"))
        notes.extend(self.end(self.ours(), "appeared during shutdown"))
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return notes


class Watchdog:
    """After ``seconds``: dump stacks and interrupt the main thread, whose
    ``finally`` then cleans up as usual; if that does not finish within 90 s,
    clean up from here (processes by pid, no Ray API) and exit 124."""

    def __init__(self, seconds: float, cleanup: Cleanup) -> None:
        self.seconds = seconds
        self.cleanup = cleanup
        self.fired = threading.Event()
        self._finished = threading.Event()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        print(
            f"\n[core] benchmark exceeded {self.seconds:g} s; stacks:", file=sys.stderr, flush=True
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        main_ident = threading.main_thread().ident
        if main_ident is not None:
            signal.pthread_kill(main_ident, signal.SIGINT)
        if self._finished.wait(90):
            return
        print(
            "[core] main thread did not stop; cleaning up from the watchdog",
            file=sys.stderr,
            flush=True,
        )
        for note in self.cleanup.hard():
            print(f"[core] {note}", file=sys.stderr, flush=True)
        os._exit(124)

    def cancel(self) -> None:
        self._finished.set()
        self._timer.cancel()


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
    sys.path.insert(0, str(src))
    parts = [str(src), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    notes.append(f"ketch is not installed; used {src} via PYTHONPATH")


def run_ketch(sizes: Sizes, cleanup: Cleanup, results: dict, notes: list[str]) -> None:
    os.environ["KETCH_HOME"] = str(cleanup.ketch_home)
    os.environ.pop("KETCH_SERVER_URL", None)
    sys.path.insert(0, str(BENCH_DIR))
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
    runs = []
    for i in range(sizes.fresh_runs):
        proc = subprocess.run(
            [sys.executable, "-c", FRESH_APP_SCRIPT, str(BENCH_DIR)],
            env=cleanup.ketch_env(),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(cleanup.workdir),
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("KETCH_FRESH ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(
                f"fresh-app run {i} exited {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
            )
        runs.append(json.loads(line.split(" ", 1)[1]))
    firsts = [r["first_result_s"] for r in runs]
    results["ketch"]["fresh"] = {
        "p50_ms": percentile(firsts, 50) * 1e3,
        "samples_ms": [x * 1e3 for x in firsts],
        "import_p50_ms": percentile([r["import_s"] for r in runs], 50) * 1e3,
        "exit_p50_ms": percentile([r["exit_s"] for r in runs], 50) * 1e3,
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
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's default auth, but with a per-run token in the environment, so that
    # ray.init() does not write one to ~/.ray/auth_token.
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    t0 = time.perf_counter()
    import logging

    import ray

    notes.append(
        f"ray {ray.__version__}: `import ray` took {(time.perf_counter() - t0) * 1e3:.0f} ms"
    )

    log("ray: init (2 CPUs, 127.0.0.1, no dashboard)")
    cleanup.ray_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cleanup.ray_started = True
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(cleanup.ray_dir),
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    notes.append(f"ray: `ray.init()` took {(time.perf_counter() - t0) * 1e3:.0f} ms")

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
        "p50_ms": percentile(firsts, 50) * 1e3,
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


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer calls and inputs")
    ap.add_argument("--only", choices=("ketch", "ray"), help="run one side only")
    ap.add_argument("--json", metavar="PATH", help="also write raw results as JSON")
    ap.add_argument(
        "--timeout", type=float, default=600.0, help="abort (and clean up) after this many seconds"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary KETCH_HOME / Ray dir")
    args = ap.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="ketch-bench-"))
    cleanup = Cleanup(workdir, keep=args.keep)
    watchdog = Watchdog(args.timeout, cleanup)

    results: dict = {s: {} for s in SYSTEMS}
    notes: list[str] = []
    t_start = time.perf_counter()
    aborted = False
    try:
        try:
            if args.only in (None, "ketch"):
                try:
                    run_ketch(sizes, cleanup, results, notes)
                except Exception as exc:  # noqa: BLE001 - report, then go on with Ray
                    traceback.print_exc()
                    results["ketch"]["error"] = f"{type(exc).__name__}: {exc}"
                # Stop ketch before Ray starts, so the two never share the CPUs.
                procs = cleanup.ours()
                note = cleanup.stop_ketch()
                if note:
                    notes.append(note)
                left = cleanup.wait_gone(procs, 10.0)
                notes.extend(
                    cleanup.end(left, "ketch process still running 10 s after `ketch server stop`")
                )
            if args.only in (None, "ray"):
                try:
                    run_ray(sizes, cleanup, results, notes)
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    results["ray_task"]["error"] = results["ray_actor"]["error"] = (
                        f"{type(exc).__name__}: {exc}"
                    )
        finally:
            notes.extend(cleanup.run())
    except KeyboardInterrupt:
        if not watchdog.fired.is_set():
            raise
        aborted = True
        notes.insert(0, f"ABORTED after {args.timeout:g} s (--timeout); the table is partial")
    finally:
        watchdog.cancel()

    total = time.perf_counter() - t_start
    print(f"## ketch vs Ray, core metrics{' (--quick)' if args.quick else ''}\n")
    print(f"Machine: {machine_line()}. Wall time of the benchmark: {total:.0f} s.\n")
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
        payload = {
            "sizes": asdict(sizes),
            "machine": machine_line(),
            "wall_s": total,
            "results": results,
            "notes": notes,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    if aborted:
        return 124
    failed = any("error" in results[s] for s in SYSTEMS if args.only in (None, s.split("_")[0]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
