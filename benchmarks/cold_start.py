#!/usr/bin/env python
"""Cold-start benchmark: ketch (sandbox and local runtimes), the host floor and Ray, in one run.

Usage::

    .venv/bin/python benchmarks/cold_start.py            # full run, n=10 per row
    .venv/bin/python benchmarks/cold_start.py --quick    # smoke run, n=3 per row
    .venv/bin/python benchmarks/cold_start.py --json out.json

Cold start, as measured here: the time from ``f.remote(x)`` to its result when
no container of ``f`` is running, with the control plane already up and the
app already created. Each trial is a fresh Python process that imports the
app module, enters ``with app.run():`` (not timed) and times its first
``.remote()`` call, so the app, its functions and their container pool are new.
Images are built before any timing, by one untimed warm-up trial per case.

Cases: (a) the trivial ``f(x) -> x`` (``_cold_app.py``); (b) a function whose
module imports numpy at top level (``_cold_numpy_app.py``).

Rows per case:

* ketch, ``KETCH_RUNTIME=sandbox``: bubblewrap sandboxes of an image (the
  default image for (a), ``debian_slim().pip_install("numpy")`` for (b));
  skipped, with the reason, where ``ketch.worker.isolate.support()`` says no;
* ketch, ``sandbox`` rootless: the same, with the control plane (and so
  everything it starts) run by an ordinary account made for the run
  (``tests/accounts.py``, with a subordinate id range; removed at the end):
  it builds its own images in its own cache and runs in a user namespace of
  its own (docs/rootless.md). Run as root only (making an account needs it);
  skipped with the reason otherwise;
* ketch, ``KETCH_RUNTIME=local``: containers forked from a warm template
  process on the host;
* Ray actor start: from ``A.remote()`` to the first method result, Ray already
  initialized (2 CPUs, 127.0.0.1, no dashboard); for (b) the actor class lives
  in ``_cold_ray_numpy.py``, which imports numpy;
* host floor: wall time of a fresh ``python -c "pass"`` / ``python -c "import
  numpy"`` subprocess (no templates, no sandbox).

The runtime is a per-control-plane setting, so each runtime gets its own
throw-away ``KETCH_HOME`` and its control plane is stopped (``ketch server
stop``) before the next phase starts; Ray runs last, alone. The image cache
(``KETCH_IMAGE_CACHE``) is left at its machine-wide default so that built
layers (the Debian base above all) are reused. Every process this run starts
carries the run's directory in its environment; at exit, any of them still
alive (control planes, containers, Ray) is reported and ended by pid, and
overlay mounts left under the run's directory are detached. ``--timeout``
interrupts a stuck run, cleans up the same way, prints the partial table and
exits 124.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # run as a file from elsewhere, or with -P
    sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402

# Issue 20's targets, p50 under the sandbox runtime (fork templates and snapshots)
TARGETS_MS = {"trivial": 30.0, "numpy": 40.0, "model": 60.0}
TARGET_SCALE_S = 2.0  # 0 -> SCALE_N containers of one function, all ready
TARGET_MEMORY_RATIO = 2.0  # SCALE_N forks of the 500 MB model, against one
SCALE_N = 50

FULL_N = 10
QUICK_N = 3
WARMUP_TIMEOUT_S = 900.0  # one warm-up trial may build an image
TRIAL_TIMEOUT_S = 120.0
QUIET_TIMEOUT_S = 30.0  # wait for the previous trial's containers to go away
RAY_SETTLE_S = 1.0  # let Ray's worker pool refill after an actor is killed

MARKER_ENV = "KETCH_COLD_BENCH_RUN"  # names the run's directory in every process we start


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    module: str  # the ketch app module in benchmarks/
    arg: int
    want: int
    floor_code: str  # what the host floor runs with ``python -c``


CASES = (
    Case("trivial", "(a) trivial `f(x) -> x`", "_cold_app", 7, 7, "pass"),
    Case(
        "numpy",
        "(b) module imports numpy and scikit-learn, snapshot",
        "_cold_numpy_app",
        1000,
        499500,
        "import numpy",
    ),
    Case(
        "model",
        "(c) `@enter(snap=True)` builds a 500 MB model (~2 s), snapshot",
        "_cold_model_app",
        7,
        7,
        "import os; bytearray(os.urandom(500 << 20))",
    ),
)

SYSTEMS = ("sandbox", "sandbox-fresh", "rootless", "local", "ray", "host")
# one control plane, in its own KETCH_HOME, each
RUNTIMES = ("sandbox", "sandbox-fresh", "rootless", "local")
SYSTEM_LABELS = {
    "sandbox": "ketch, sandbox runtime (fork templates, snapshots)",
    "sandbox-fresh": "ketch, sandbox runtime, `fork_containers = false`",
    "rootless": "ketch, sandbox runtime, ordinary account",
    "local": "ketch, local runtime (no snapshots)",
    "ray": "Ray actor start",
    "host": "host floor: fresh `python -c`",
}


# --------------------------------------------------------------------------
# small helpers


log = h.logger("cold")


def summary(samples_s: list[float]) -> dict:
    ms = [x * 1e3 for x in samples_s]
    return {
        "p50_ms": h.percentile(ms, 50),
        "p90_ms": h.percentile(ms, 90),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "n": len(ms),
        "samples_ms": ms,
    }


# --------------------------------------------------------------------------
# cleanup


class Cleanup(h.Cleanup):
    """Undoes the run (see ``_harness.Cleanup``): a control plane per runtime, mounts.

    Every process we start inherits ``KETCH_COLD_BENCH_RUN``, which names the
    run's directory: that is how control planes, reparented once the trial
    process that auto-started them exits, are found.
    """

    account = None  # the ordinary account of the rootless rows, while it exists

    def home(self, runtime: str) -> Path:
        if runtime == "rootless" and self.account is not None:
            return Path(self.account.home) / "ketch-home"
        return self.workdir / f"home-{runtime}"

    def ketch_env(self, runtime: str) -> dict[str, str]:
        env = h.ketch_env(self.home(runtime))
        env["KETCH_RUNTIME"] = "local" if runtime == "local" else "sandbox"
        if runtime == "sandbox-fresh":  # today's path: a fresh sandbox and interpreter each
            env["KETCH_FORK_CONTAINERS"] = "0"
        # The node's cap on running containers is 4 x its CPUs by default (8 here): room for
        # the 0 -> N measurement (one container at a time in the trials either way).
        env["KETCH_MAX_CONTAINERS_PER_NODE"] = str(SCALE_N + 10)
        env.pop("KETCH_FORCE_BUILD", None)
        return self.account.env(env) if runtime == "rootless" and self.account else env

    def wrap(self, runtime: str):
        """Commands of that runtime's phase run as the account (rootless), else as they are."""
        return self.account.command if runtime == "rootless" and self.account else None

    def cwd(self, runtime: str) -> Path:
        return self.account.home if runtime == "rootless" and self.account else self.workdir

    def stop_ketch(self, runtime: str) -> list[str]:
        """``ketch server stop`` for that runtime's KETCH_HOME; a note on trouble."""
        what = f"`ketch server stop` ({runtime})"
        return h.stop_control_plane(self.ketch_env(runtime), what, self.wrap(runtime))

    def stop_ketch_all(self) -> list[str]:
        return [note for runtime in RUNTIMES for note in self.stop_ketch(runtime)]

    def stop_phase(self, runtime: str) -> list[str]:
        """Stop one runtime's control plane and make sure all of its processes are gone."""

        def stop() -> list[str]:
            t0 = time.perf_counter()
            notes = self.stop_ketch(runtime)
            took = time.perf_counter() - t0
            if took > 5.0:
                notes.append(f"`ketch server stop` ({runtime}) took {took:.1f} s")
            return notes

        notes = self.stop_plane(stop, f"still running 10 s after `ketch server stop` ({runtime})")
        notes.extend(self.tidy())
        return notes

    def tidy(self) -> list[str]:
        """Detach mounts under the run's directory (overlays of a control plane that was killed)."""
        notes = []
        prefix = str(self.workdir) + "/"
        try:
            lines = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return notes
        points = []
        for line in lines:
            parts = line.split()
            if len(parts) > 1:
                point = parts[1].replace("\\040", " ")
                if point.startswith(prefix):
                    points.append(point)
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
            notes.append(f"detached a leftover mount: {point}")
        return notes

    def remove_workdir(self) -> None:
        if self.account is not None:  # an interrupted rootless phase: the account goes too
            self.account.remove()
            self.account = None
        if self.keep:
            return
        # The sandbox runtime keeps its unix sockets in a short directory under /tmp
        # named after KETCH_HOME; remove ours, if the control plane left them.
        for runtime in RUNTIMES:
            with contextlib.suppress(Exception):
                from ketch.worker.bubblewrap import socket_dir

                if self.home(runtime).exists():
                    shutil.rmtree(socket_dir(self.home(runtime)), ignore_errors=True)
        super().remove_workdir()


# --------------------------------------------------------------------------
# host floor


def timed_run(argv: list[str]) -> float:
    """Wall time of one subprocess, start to exit, in seconds.

    ``Popen.wait()`` without a timeout blocks in ``waitpid``; ``subprocess.run``
    with a timeout polls with sleeps that grow to 50 ms, which would round the
    number up to the next poll. A stuck child is left to ``--timeout``.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    elapsed = time.perf_counter() - t0
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, argv)
    return elapsed


def run_host(n: int, results: dict) -> None:
    for case in CASES:
        log(f"host: {n} x `python -c {case.floor_code!r}`")
        argv = [sys.executable, "-c", case.floor_code]
        timed_run(argv)  # untimed: warms the page cache
        samples = [timed_run(argv) for _ in range(n)]
        results[case.key]["host"] = summary(samples)


# --------------------------------------------------------------------------
# ketch

# Runs in a fresh interpreter: import the app module, start a fresh ephemeral
# app, time its first .remote() call.
TRIAL_SCRIPT = r"""
import importlib, json, sys, time
t_start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
m = importlib.import_module(sys.argv[2])
arg, want = int(sys.argv[3]), int(sys.argv[4])
t_imported = time.perf_counter()
with m.app.run():
    t_entered = time.perf_counter()
    got = m.call(arg) if hasattr(m, "call") else m.f.remote(arg)
    t_first = time.perf_counter()
t_exited = time.perf_counter()
if got != want:
    raise SystemExit(f"f({arg}) returned {got!r}, expected {want!r}")
print("KETCH_COLD " + json.dumps({
    "import_s": t_imported - t_start,
    "enter_s": t_entered - t_imported,
    "cold_s": t_first - t_entered,
    "exit_s": t_exited - t_first,
}), flush=True)
"""


def ketch_trial(case: Case, env: dict[str, str], cwd: Path, timeout: float, wrap=None) -> dict:
    args = [str(BENCH_DIR), case.module, str(case.arg), str(case.want)]
    what = f"{case.key} trial"
    return h.run_script(TRIAL_SCRIPT, args, "KETCH_COLD ", what, env, cwd, timeout, wrap)


def busy_containers(home: Path) -> list[str]:
    """What still runs of earlier apps: container directories and container processes.

    Containers are the control plane's descendants, except the local runtime's
    template process itself (a direct child that lives as long as the control
    plane; the containers it forks are its children and do count).
    """
    found = []
    cdir = home / "containers"
    with contextlib.suppress(OSError):
        # tpl-*: the sandbox runtime's fork templates, which stay (as the local one's does)
        found += [f"dir {p.name}" for p in cdir.iterdir() if not p.name.startswith("tpl-")]
    if _sandbox_home(home):
        return found  # a sandbox container's folder goes only after its processes
    try:
        server = int(json.loads((home / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return found
    for pid, ppid in h.descendants(h.proc_table(), server).items():
        line = h.cmdline(pid)
        if ppid == server and "ketch.guest.template" in line:
            continue
        found.append(f"pid {pid} `{line}`")
    return found


def _sandbox_home(home: Path) -> bool:
    return not home.name.endswith("-local")


def wait_quiet(home: Path, notes: list[str]) -> None:
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    while busy := busy_containers(home):
        if time.monotonic() > deadline:
            notes.append(
                f"{home.name}: containers of an earlier trial still there after "
                f"{QUIET_TIMEOUT_S:g} s, timed anyway: {'; '.join(busy)[:300]}"
            )
            return
        time.sleep(0.05)
    time.sleep(0.2)  # let the teardown's last writes settle


# 0 -> N: a fresh app maps N inputs that each stay busy HOLD_S seconds, so N containers
# start at once; "ready" is when the last input began, from the map's call. With
# memory, the node's used memory (MemTotal - MemAvailable) is read with one container
# running (and the snapshot it started from), steady, then at its peak through the
# N-container run; each minus the memory before either.
SCALE_SCRIPT = r"""
import importlib, json, sys, threading, time
sys.path.insert(0, sys.argv[1])
m = importlib.import_module(sys.argv[2])
n, hold, memory = int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"

def used():
    info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) / 1024

def peak_of(fn):
    peak, stop = [used()], threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], used())
            time.sleep(0.05)
    t = threading.Thread(target=sample)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return out, peak[0]

target = m.Model().hold if hasattr(m, "Model") else m.hold
out = {}
with m.app.run():
    if memory:
        before = used()
        target.remote(0.0)  # takes the snapshot, starts one container
        time.sleep(1.0)
        out["memory_1_mib"] = used() - before  # the template and one container, steady
        time.sleep(hold)
    t0 = time.time()
    began, peak = peak_of(lambda: list(target.map([hold] * n)))
    out["ready_s"] = max(began) - t0
    if memory:
        out["memory_n_mib"] = peak - before
        out["memory_ratio"] = out["memory_n_mib"] / out["memory_1_mib"]
print("KETCH_SCALE " + json.dumps(out), flush=True)
"""
HOLD_S = 4.0


def run_scale(runtime: str, cleanup: Cleanup, results: dict, notes: list[str]) -> None:
    """0 -> SCALE_N containers: the model class from its snapshot (and the node's memory
    through it) with fork templates; without them, the trivial app's ``hold`` (N fresh
    copies of the 500 MB model would not fit this machine)."""
    env = cleanup.ketch_env(runtime)
    forks = runtime != "sandbox-fresh"
    module = "_cold_model_scale" if forks else "_cold_app"
    if forks:  # a module of its own: a new snapshot, so "before" holds none of the model
        (cleanup.workdir / "_cold_model_scale.py").write_text(
            (BENCH_DIR / "_cold_model_app.py")
            .read_text()
            .replace("bench-cold-model", "bench-scale")
        )
    args = [str(cleanup.workdir), module, str(SCALE_N), str(HOLD_S), "1" if forks else "0"]
    if not forks:
        args[0] = str(BENCH_DIR)
    log(f"{runtime}: 0 -> {SCALE_N} containers of {module}")
    got = h.run_script(
        SCALE_SCRIPT,
        args,
        "KETCH_SCALE ",
        "scale",
        env,
        cleanup.workdir,
        600.0,
        cleanup.wrap(runtime),
    )
    got["what"] = "the 500 MB model class, from its snapshot" if forks else "the trivial app"
    results.setdefault("scale", {})[runtime] = got


def run_ketch(runtime: str, n: int, cleanup: Cleanup, results: dict, notes: list[str]) -> None:
    env = cleanup.ketch_env(runtime)
    home = cleanup.home(runtime)
    wrap, cwd = cleanup.wrap(runtime), cleanup.cwd(runtime)
    log(f"{runtime}: warm-up (starts the control plane, builds images)")
    for case in CASES:
        t0 = time.perf_counter()
        r = ketch_trial(case, env, cwd, WARMUP_TIMEOUT_S, wrap)
        notes.append(
            f"{runtime}: warm-up trial {case.key} (untimed; "
            f"{'control plane start + ' if case is CASES[0] else ''}image check/build + first call): "
            f"{time.perf_counter() - t0:.1f} s in all, `app.run()` entry {r['enter_s'] * 1e3:.0f} ms, "
            f"first call {r['cold_s'] * 1e3:.0f} ms"
        )
    runs: dict[str, list[dict]] = {case.key: [] for case in CASES}
    log(f"{runtime}: {n} fresh apps per case, each in a fresh process")
    for i in range(n):
        # Alternate the order of the cases, so neither always follows the other.
        for case in CASES if i % 2 == 0 else CASES[::-1]:
            wait_quiet(home, notes)
            runs[case.key].append(ketch_trial(case, env, cwd, TRIAL_TIMEOUT_S, wrap))
    for case in CASES:
        rs = runs[case.key]
        entry = summary([r["cold_s"] for r in rs])
        for key in ("import_s", "enter_s", "exit_s"):
            entry[key.replace("_s", "_p50_ms")] = h.percentile([r[key] for r in rs], 50) * 1e3
        results[case.key][runtime] = entry
        notes.append(
            f"{runtime}, {case.key}: per trial process, not counted, p50: import ketch + module "
            f"{entry['import_p50_ms']:.0f} ms, `app.run()` entry (app create, image check) "
            f"{entry['enter_p50_ms']:.0f} ms, leaving `app.run()` {entry['exit_p50_ms']:.0f} ms"
        )


# --------------------------------------------------------------------------
# Ray


class TrivialEcho:
    """Ray's case (a): defined in ``__main__``, so Ray pickles it by value."""

    def f(self, x):
        return x


def run_ray(n: int, cleanup: Cleanup, results: dict, notes: list[str]) -> None:
    # Actor workers import _cold_ray_numpy by name: put benchmarks/ on their path.
    h.prepend_path(BENCH_DIR)
    import _cold_ray_numpy

    _, init_s = h.start_ray(cleanup, log)
    import ray

    notes.append(f"ray {ray.__version__}: `ray.init()` took {init_s * 1e3:.0f} ms")

    actors = {
        "trivial": ray.remote(TrivialEcho),
        "numpy": ray.remote(_cold_ray_numpy.NumpyEcho),  # numpy only: sklearn is not in the venv
        "model": ray.remote(_cold_ray_numpy.ModelEcho),
    }

    def one(case: Case) -> float:
        time.sleep(RAY_SETTLE_S)
        t0 = time.perf_counter()
        actor = actors[case.key].remote()
        got = ray.get(actor.f.remote(case.arg))
        elapsed = time.perf_counter() - t0
        ray.kill(actor)
        if got != case.want:
            raise AssertionError(f"ray {case.key}: f({case.arg}) returned {got!r}")
        return elapsed

    log("ray: warm-up actors (untimed; exports the classes)")
    for case in CASES:
        one(case)
    samples: dict[str, list[float]] = {case.key: [] for case in CASES}
    log(f"ray: {n} fresh actors per case")
    for i in range(n):
        for case in CASES if i % 2 == 0 else CASES[::-1]:
            samples[case.key].append(one(case))
    for case in CASES:
        results[case.key]["ray"] = summary(samples[case.key])


# --------------------------------------------------------------------------
# report


def cell(entry: dict | None, key: str) -> str:
    if entry is None:
        return "—"
    if "skipped" in entry:
        return "skipped"
    if "error" in entry:
        return "error"
    if key == "n":
        return str(entry["n"])
    return f"{entry[key]:,.0f}"


def render(results: dict) -> str:
    header = ("case", "system", "p50 ms", "p90 ms", "min ms", "max ms", "n")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * 5) + "|",
    ]
    for case in CASES:
        for system in SYSTEMS:
            entry = results[case.key].get(system)
            label = SYSTEM_LABELS[system]
            if system == "host":
                label = f'host floor: fresh `python -c "{case.floor_code}"`'
            row = [case.label, label] + [
                cell(entry, k) for k in ("p50_ms", "p90_ms", "min_ms", "max_ms", "n")
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdicts(results: dict) -> list[str]:
    out = []
    for case in CASES:
        got = results[case.key].get("sandbox")
        target = TARGETS_MS[case.key]
        if got is None or "p50_ms" not in got:
            why = (got or {}).get("skipped") or (got or {}).get("error", "not run").splitlines()[0]
            out.append(f"{case.label}: <= {target:g} ms p50 under sandbox: n/a ({why})")
            continue
        ok = got["p50_ms"] <= target
        out.append(
            f"{case.label}: <= {target:g} ms p50 under sandbox: "
            f"{'met' if ok else 'MISSED'} (p50 {got['p50_ms']:.0f} ms)"
        )
    scale = results.get("scale", {})
    for system, entry in sorted(scale.items()):
        if "ready_s" in entry:
            ok = entry["ready_s"] <= TARGET_SCALE_S
            out.append(
                f"0 -> {SCALE_N} containers ({SYSTEM_LABELS[system]}, {entry['what']}): all ready "
                f"in {entry['ready_s']:.2f} s; target <= {TARGET_SCALE_S:g} s "
                f"{'met' if ok else 'MISSED'}"
            )
        if "memory_ratio" in entry:
            ok = entry["memory_ratio"] <= TARGET_MEMORY_RATIO
            out.append(
                f"memory, {SCALE_N} forks of the 500 MB model: {entry['memory_n_mib']:.0f} MiB "
                f"against {entry['memory_1_mib']:.0f} MiB for one (node total, MemAvailable) = "
                f"{entry['memory_ratio']:.2f} x; target <= {TARGET_MEMORY_RATIO:g} x "
                f"{'met' if ok else 'MISSED'}"
            )
    return out


def make_account(cleanup: Cleanup) -> str:
    """Make the rootless rows' account (``cleanup.account``); "" or why not."""
    sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
    import accounts

    why_not = accounts.missing()
    if not why_not:
        cleanup.account = accounts.Account.create(prefix="kbench")
    return why_not


def sandbox_support() -> tuple[bool, str]:
    try:
        from ketch.worker.isolate import support
    except Exception as exc:  # noqa: BLE001
        return False, f"cannot import ketch: {exc!r}"
    s = support()
    return s.ok, s.reason


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke run: n={QUICK_N} per row")
    ap.add_argument("--n", type=int, help=f"trials per row (default {FULL_N}, --quick {QUICK_N})")
    ap.add_argument(
        "--only",
        metavar="LIST",
        help="comma-separated subset of " + ",".join(SYSTEMS) + " (default: all)",
    )
    ap.add_argument(
        "--no-scale", action="store_true", help=f"skip the 0 -> {SCALE_N} containers measurement"
    )
    h.add_run_options(ap, timeout=1800.0, keep_help="keep the temporary directory")
    args = ap.parse_args(argv)

    n = args.n or (QUICK_N if args.quick else FULL_N)
    chosen = (
        SYSTEMS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    )
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")

    workdir = Path(tempfile.mkdtemp(prefix="ketch-cold-"))
    os.environ[MARKER_ENV] = str(workdir)  # inherited by everything we start
    cleanup = Cleanup(workdir, keep=args.keep)
    watchdog = h.Watchdog(args.timeout, cleanup, log)

    results: dict = {case.key: {} for case in CASES}
    notes: list[str] = []
    t_start = time.perf_counter()

    def failed(system: str, exc: BaseException) -> None:
        traceback.print_exc()
        for case in CASES:
            results[case.key].setdefault(system, {"error": f"{type(exc).__name__}: {exc}"})

    if importlib.util.find_spec("numpy") is None:
        notes.append(
            "numpy is not installed in this Python; case (b) needs it on the host "
            "(`pip install numpy`, or `pip install -e '.[bench]'`)"
        )

    def body() -> None:
        if "host" in chosen:
            try:
                run_host(n, results)
            except Exception as exc:  # noqa: BLE001 - report, go on
                failed("host", exc)
        for runtime in RUNTIMES:
            if runtime not in chosen:
                continue
            reason = ""
            if runtime == "sandbox":
                ok, reason = sandbox_support()
            elif runtime == "rootless":
                reason = make_account(cleanup)
            if reason:
                for case in CASES:
                    results[case.key][runtime] = {"skipped": reason}
                notes.append(f"{runtime} rows skipped: {reason}")
                continue
            try:
                run_ketch(runtime, n, cleanup, results, notes)
                if runtime in ("sandbox", "sandbox-fresh") and not args.no_scale:
                    run_scale(runtime, cleanup, results, notes)
            except Exception as exc:  # noqa: BLE001
                failed(runtime, exc)
            finally:
                # One control plane at a time: stop this one before the next phase.
                notes.extend(cleanup.stop_phase(runtime))
                if runtime == "rootless" and cleanup.account is not None:
                    cleanup.account.remove()
                    cleanup.account = None
        if "ray" in chosen:
            try:
                run_ray(n, cleanup, results, notes)
            except Exception as exc:  # noqa: BLE001
                failed("ray", exc)

    aborted = h.guarded(body, cleanup, watchdog, notes)

    total = time.perf_counter() - t_start
    machine = h.machine_line(load=True)
    h.print_head("Cold start: ketch vs its floor and Ray", args.quick, machine, total)
    print(render(results))
    print()
    print("Targets:")
    for line in verdicts(results):
        print(f"- {line}")
    print()
    for case in CASES:
        for system in SYSTEMS:
            entry = results[case.key].get(system)
            if entry and "error" in entry:
                print(f"- {system} {case.key} failed: {entry['error'].splitlines()[0][:300]}")
    for note in notes:
        print(f"- {note}")
    for case in CASES:
        for system in SYSTEMS:
            entry = results[case.key].get(system)
            if entry and "samples_ms" in entry:
                samples = ", ".join(f"{x:.0f}" for x in entry["samples_ms"])
                print(f"- samples, ms, {case.key} / {system}: {samples}")

    if args.json:
        h.write_json(args.json, {"n": n}, machine, total, results, notes)
    if aborted:
        return 124
    bad = any("error" in results[c.key].get(s, {}) for c in CASES for s in chosen)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
