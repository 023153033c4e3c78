"""What ``benchmarks/core.py`` and ``benchmarks/cold_start.py`` share.

Not a benchmark of its own: the scripts are run as files (``python
benchmarks/core.py``), and each puts this directory on ``sys.path`` before it
imports this module. Here live the parts that are the same in both:

* progress lines on stderr (``logger``), percentiles, the machine line and
  the head of the report;
* the process bookkeeping: which live processes a run started (descendants of
  the benchmark process, or ones whose command line or environment names the
  run's directories), and ending them by pid after checking their start time;
* ``Cleanup``, which stops control planes and Ray and removes the run's
  directory whatever happens, and ``Watchdog`` / ``guarded``, which turn a run
  past ``--timeout`` into a cleaned-up, partial report with exit status 124;
* running a measuring script in a fresh interpreter, and starting Ray the
  same way in both scripts (2 CPUs, 127.0.0.1, no dashboard, own directory).
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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

Log = Callable[[str], None]


# --------------------------------------------------------------------------
# small helpers


def logger(tag: str) -> Log:
    """A ``log(msg)`` that writes ``[tag] msg`` to stderr at once."""

    def log(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    return log


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def prepend_path(path: Path) -> None:
    """Puts ``path`` first on ``sys.path`` here and on ``PYTHONPATH`` for what we start."""
    sys.path.insert(0, str(path))
    parts = [str(path), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)


def machine_line(load: bool = False) -> str:
    """CPUs, CPU model, Python and kernel; with ``load``, the load average too."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    extra = ""
    if load:
        with contextlib.suppress(OSError):
            extra = ", load average at start " + " ".join(
                Path("/proc/loadavg").read_text().split()[:3]
            )
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}{extra}"
    )


def ms_row(name: str, samples: list[float], scale: float = 1e3) -> str:
    """A ``| name | p50 | p90 | n |`` table row of ``samples`` (seconds, shown in ms)."""
    ms = [x * scale for x in samples]
    if len(ms) == 1:
        return f"| {name} | {ms[0]:,.1f} | — | 1 |"
    return f"| {name} | {percentile(ms, 50):,.1f} | {percentile(ms, 90):,.1f} | {len(ms)} |"


def add_run_options(ap: argparse.ArgumentParser, timeout: float, keep_help: str) -> None:
    """``--json``, ``--timeout`` and ``--keep``, the options every benchmark ends with."""
    ap.add_argument("--json", metavar="PATH", help="also write raw results as JSON")
    ap.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help="abort (and clean up) after this many seconds",
    )
    ap.add_argument("--keep", action="store_true", help=keep_help)


def print_head(title: str, quick: bool, machine: str, wall_s: float) -> None:
    """The report's title and its machine / wall-time line."""
    print(f"## {title}{' (--quick)' if quick else ''}\n")
    print(f"Machine: {machine}. Wall time of the benchmark: {wall_s:.0f} s.\n")


def write_json(
    path: str, head: dict, machine: str, wall_s: float, results: dict, notes: list[str]
) -> None:
    """The raw results: ``head`` (the run's sizes) first, then what every benchmark records."""
    payload = {**head, "machine": machine, "wall_s": wall_s, "results": results, "notes": notes}
    Path(path).write_text(json.dumps(payload, indent=2))


def run_script(
    script: str,
    args: list[str],
    prefix: str,
    what: str,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> dict:
    """Runs ``python -c script *args`` (through ``wrap``: as another account, say); the
    JSON after ``prefix`` on the line it prints.

    A non-zero exit or a missing line raises, with the ends of both output streams.
    """
    argv = [sys.executable, "-c", script, *args]
    proc = subprocess.run(
        wrap(argv) if wrap else argv,
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(prefix)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"{what} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
        )
    return json.loads(line.split(" ", 1)[1])


# --------------------------------------------------------------------------
# processes


def proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, state) of every process in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the fields after the ")" that closes the command name: state, ppid, ..., starttime
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
    return table


def cmdline(pid: int, width: int = 140) -> str:
    """The first ``width`` characters of a process's command line; ``?`` once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:width]


def descendants(table: dict[int, tuple[int, str, str]], root: int) -> dict[int, int]:
    """pid -> parent pid of every live descendant of ``root``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found[child] = table[child][0]
                stack.append(child)
    return {pid: ppid for pid, ppid in found.items() if table[pid][2] != "Z"}


def ketch_env(home: Path) -> dict[str, str]:
    """This environment, pointed at the control plane of ``home`` (never at a remote one)."""
    env = dict(os.environ)
    env["KETCH_HOME"] = str(home)
    env.pop("KETCH_SERVER_URL", None)
    return env


def stop_control_plane(
    env: dict[str, str],
    what: str = "`ketch server stop`",
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> list[str]:
    """``ketch server stop`` for ``env``'s KETCH_HOME, if it exists; a note on trouble."""
    if not Path(env["KETCH_HOME"]).exists():
        return []
    cli = Path(sys.executable).parent / "ketch"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "ketch.cli.main"]
    argv = [*cmd, "server", "stop"]
    try:
        proc = subprocess.run(
            wrap(argv) if wrap else argv, env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"{what} failed: {exc!r}"]
    if proc.returncode != 0:
        return [f"{what} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}"]
    return []


# --------------------------------------------------------------------------
# cleanup and watchdog


class Cleanup:
    """Everything a run started, and how to undo it, whatever happens (also from the watchdog).

    A process is the run's if it descends from this one, or if its command line
    or environment names one of ``markers()`` (control planes outlive the
    process that auto-started them and are reparented, so that is how they are
    found). Only those are signalled, by pid, after checking their start time;
    never this process or its ancestors.

    A benchmark says what is particular to it by overriding ``markers``,
    ``stop_ketch_all`` (its control planes), ``tidy`` (what to undo once the
    processes are gone) and ``remove_workdir``.
    """

    cmdline_width = 140  # how much of a command line the notes quote

    def __init__(self, workdir: Path, keep: bool) -> None:
        self.workdir = workdir
        self.keep = keep
        self.ray_dir = workdir / "ray"
        self.ray_started = False
        self._lock = threading.Lock()
        self._done = False

    # -- what a benchmark overrides

    def markers(self) -> list[Path]:
        """Paths that, named by a process's command line or environment, make it ours."""
        return [self.workdir]

    def stop_ketch_all(self) -> list[str]:
        """Stops every control plane of the run (CLI only, no waiting); notes on trouble."""
        return []

    def tidy(self) -> list[str]:
        """Undoes what the run's processes left behind, once they are gone; notes."""
        return []

    def remove_workdir(self) -> None:
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- processes

    def ours(self) -> dict[int, str]:
        """pid -> start time of the live processes this run started."""
        table = proc_table()
        me = os.getpid()
        ancestors = set()
        pid = me
        while pid in table and pid not in ancestors:
            ancestors.add(pid)
            pid = table[pid][0]
        found = set(descendants(table, me))
        markers = [str(p).encode() for p in self.markers()]
        for pid in table:
            if pid in ancestors or pid in found:
                continue
            blob = b""
            for part in ("cmdline", "environ"):
                with contextlib.suppress(OSError):
                    blob += Path(f"/proc/{pid}/{part}").read_bytes()
            if any(m in blob for m in markers):
                found.add(pid)
        return {pid: table[pid][1] for pid in found if table[pid][2] != "Z"}

    @staticmethod
    def still_alive(procs: dict[int, str]) -> dict[int, str]:
        table = proc_table()
        return {
            pid: start
            for pid, start in procs.items()
            if pid in table and table[pid][1] == start and table[pid][2] != "Z"
        }

    def wait_gone(self, procs: dict[int, str], timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        alive = self.still_alive(procs)
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = self.still_alive(alive)
        return alive

    def end(self, procs: dict[int, str], why: str) -> list[str]:
        """SIGTERM, then SIGKILL after 5 s, the given processes (pid + start time checked)."""
        notes = []
        alive = self.still_alive(procs)
        for pid in alive:
            notes.append(f"{why}; ended by pid: {pid} `{cmdline(pid, self.cmdline_width)}`")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        for pid in self.wait_gone(alive, 5.0):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return notes

    def stop_plane(self, stop: Callable[[], list[str]], why: str) -> list[str]:
        """``stop()`` a control plane, then end whatever of ours outlives it by 10 s."""
        procs = self.ours()
        notes = stop()
        left = self.wait_gone(procs, 10.0)
        notes.extend(self.end(left, why))
        return notes

    # -- all of it

    def stop_ray(self) -> None:
        if not self.ray_started:
            return
        self.ray_started = False
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def hard(self) -> list[str]:
        """Last resort, from the watchdog thread: CLI stops, then our processes by pid."""
        procs = self.ours()
        notes = self.stop_ketch_all()
        notes.extend(self.end(procs, "hard cleanup after timeout"))
        notes.extend(self.tidy())
        self.remove_workdir()
        return notes

    def run(self) -> list[str]:
        with self._lock:
            if self._done:
                return []
            self._done = True
        procs = self.ours()
        notes = self.stop_ketch_all()
        try:
            self.stop_ray()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            notes.append(f"ray.shutdown() failed: {exc!r}")
        left = self.wait_gone(procs, 10.0)
        notes.extend(self.end(left, "still running 10 s after shutdown"))
        notes.extend(self.end(self.ours(), "appeared during shutdown"))
        notes.extend(self.tidy())
        self.remove_workdir()
        return notes


class ServerCleanup(Cleanup):
    """A run with one embedded control plane in ``workdir/ketch-home`` and peer
    processes of its own (servers, clients) in ``started``: stopping it stops the
    control plane and sends SIGTERM to those still running."""

    def __init__(self, workdir: Path, keep: bool) -> None:
        super().__init__(workdir, keep)
        self.ketch_home = workdir / "ketch-home"
        self.started: list[subprocess.Popen] = []

    def ketch_env(self) -> dict[str, str]:
        return ketch_env(self.ketch_home)

    def stop_ketch_all(self) -> list[str]:
        notes = stop_control_plane(self.ketch_env())
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()
        return notes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Watchdog:
    """After ``seconds``: dump stacks and interrupt the main thread, whose
    ``finally`` then cleans up as usual; if that has not finished 90 s later,
    clean up from here (processes by pid, no Ray API) and exit 124.

    ``gap`` puts a blank line on stderr before the first message.
    """

    def __init__(self, seconds: float, cleanup: Cleanup, log: Log, gap: bool = False) -> None:
        self.seconds = seconds
        self.cleanup = cleanup
        self.log = log
        self.gap = gap
        self.fired = threading.Event()
        self._finished = threading.Event()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        if self.gap:
            print(file=sys.stderr, flush=True)
        self.log(f"benchmark exceeded {self.seconds:g} s; stacks:")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        main_ident = threading.main_thread().ident
        if main_ident is not None:
            signal.pthread_kill(main_ident, signal.SIGINT)
        if self._finished.wait(90):
            return
        self.log("main thread did not stop; cleaning up from the watchdog")
        for note in self.cleanup.hard():
            self.log(note)
        os._exit(124)

    def cancel(self) -> None:
        self._finished.set()
        self._timer.cancel()


def guarded(
    body: Callable[[], None], cleanup: Cleanup, watchdog: Watchdog, notes: list[str]
) -> bool:
    """Runs ``body``, then ``cleanup``, whatever happens; True if ``watchdog`` cut it short.

    The cleanup's notes go to ``notes``; a timeout puts an ABORTED note first.
    """
    try:
        try:
            body()
        finally:
            notes.extend(cleanup.run())
    except KeyboardInterrupt:
        if not watchdog.fired.is_set():
            raise
        notes.insert(0, f"ABORTED after {watchdog.seconds:g} s (--timeout); the table is partial")
        return True
    finally:
        watchdog.cancel()
    return False


# --------------------------------------------------------------------------
# Ray


def start_ray(cleanup: Cleanup, log: Log) -> tuple[float, float]:
    """Imports Ray and starts it for the run; seconds spent on the import and in ``ray.init()``.

    ``ray.init()`` runs on 127.0.0.1 with 2 CPUs, no dashboard and the run's Ray
    directory. Usage stats are off, and Ray's default auth gets a per-run token
    in the environment, so that ``ray.init()`` writes nothing to ``~/.ray``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    t0 = time.perf_counter()
    import logging

    import ray

    import_s = time.perf_counter() - t0
    log("ray: init (2 CPUs, 127.0.0.1, no dashboard)")
    cleanup.ray_dir.mkdir(parents=True, exist_ok=True)
    cleanup.ray_started = True
    t0 = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(cleanup.ray_dir),
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return import_s, time.perf_counter() - t0
