#!/usr/bin/env python
"""Dict/Queue benchmark: ketch.Dict and ketch.Queue beside Redis, in one run.

Usage::

    .venv/bin/python benchmarks/dict_queue.py            # full run (about a minute)
    .venv/bin/python benchmarks/dict_queue.py --quick    # smoke run
    .venv/bin/python benchmarks/dict_queue.py --json out.json

The metric (see ``benchmarks/README.md``): operations per second of 4
concurrent client processes, each with a client of its own, each doing one
operation in a loop for a fixed time (or a fixed number of operations,
whichever ends first), with 100-byte values: Dict put, Dict get, Queue put,
Queue get (non-blocking; the items are there). Redis gets the same workload
from the same 4-process layout through redis-py: SET, GET, RPUSH, LPOP.
Target: ketch within 3 x of Redis's ops/s.

The systems run one after the other, never at the same time: ketch, against
an embedded control plane in a throw-away ``KETCH_HOME`` with
``KETCH_RUNTIME=local``, stopped with ``ketch server stop``; then
``redis-server`` on 127.0.0.1 and a free port without persistence
(``--save '' --appendonly no``); then a second ``redis-server`` with
``--appendonly yes --appendfsync everysec``, closer to ketch, which commits
every write to SQLite's WAL before it replies. Each Redis runs in its own
directory under the run's temporary directory and is stopped at its end.
Processes this run started that outlive their shutdown are reported and
ended by pid; ``--timeout`` (default 600 s) interrupts a stuck run, cleans up
the same way and exits 124.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # run as a file from elsewhere, or with -P
    sys.path.insert(0, str(BENCH_DIR))

import _dq_client as client  # noqa: E402
import _harness as h  # noqa: E402

TARGET_RATIO = 3.0  # ketch's ops/s at least Redis's / 3
CLIENTS = 4
KEYS_PER_CLIENT = 1000  # Dict puts cycle over this many keys per client
# Every phase stops at this many operations in all (split between the clients):
# below ketch's 100,000 items per queue partition, so Queue put never sees queue.Full.
OPS_BUDGET = 96_000
START_DELAY_S = 0.3  # the clients of a phase start this long after the command is sent
READY_TIMEOUT_S = 120.0  # a client's connect + warm-up


@dataclass(frozen=True)
class Sizes:
    duration: float  # seconds per phase, at most


FULL = Sizes(duration=5.0)
QUICK = Sizes(duration=1.0)

SYSTEMS = ("ketch", "redis", "redis_aof")
SYSTEM_LABELS = {
    "ketch": "ketch",
    "redis": "Redis",
    "redis_aof": "Redis AOF everysec",
}
REDIS_ARGS = {
    "redis": ["--save", "", "--appendonly", "no"],
    "redis_aof": ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
}
# (key, ketch operation, Redis command)
OPS = (
    ("dict_put", "Dict put", "SET"),
    ("dict_get", "Dict get", "GET"),
    ("queue_put", "Queue put", "RPUSH"),
    ("queue_get", "Queue get", "LPOP"),
)

log = h.logger("dict_queue")


# --------------------------------------------------------------------------
# bookkeeping


class Cleanup(h.ServerCleanup):
    """Undoes the run (see ``_harness.ServerCleanup``): one control plane in ``ketch_home``,
    and in ``started`` the Redis servers and the client processes (all children of this process)."""

    cmdline_width = 120

    def markers(self) -> list[Path]:
        return [self.workdir]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Client:
    """One ``_dq_client.py`` process: JSON commands on its stdin, ``DQ`` lines back."""

    def __init__(self, system: str, index: int, port: int, cleanup: Cleanup) -> None:
        kind = "ketch" if system == "ketch" else "redis"
        self.log_path = cleanup.workdir / "clients" / f"{system}-{index}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "_dq_client.py"), kind, str(index), str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
                cwd=str(cleanup.workdir),
            )
        cleanup.started.append(self.proc)
        self.name = f"{system} client {index}"
        self._buf = b""

    def send(self, msg: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())

    def recv(self, timeout: float) -> dict:
        """The next ``DQ`` line's JSON; raises if the client fails, exits or takes too long."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if not line.startswith(b"DQ "):
                    continue
                msg = json.loads(line[3:])
                if "error" in msg:
                    raise RuntimeError(f"{self.name} failed:\n{msg['error']}")
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer in {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    code = self.proc.wait(timeout=10)
                    raise RuntimeError(
                        f"{self.name} exited {code}\n--- stderr ---\n{tail(self.log_path)}"
                    )
                self._buf += chunk

    def close(self) -> str | None:
        """EOF on stdin, then wait for the exit; a note if it had to be killed."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"{self.name} still running 10 s after EOF; killed"
        with contextlib.suppress(OSError):
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return None


# --------------------------------------------------------------------------
# servers


def _ensure_ketch_importable(notes: list[str]) -> None:
    """Falls back to the checkout's ``src/`` when ketch is not installed."""
    if importlib.util.find_spec("ketch") is not None:
        return
    src = BENCH_DIR.parent / "src"
    if (src / "ketch" / "__init__.py").is_file():
        h.prepend_path(src)
        notes.append(f"ketch is not installed; used {src} via PYTHONPATH")


class KetchServer:
    """The embedded control plane of the run's KETCH_HOME, auto-started by a first lookup."""

    def __init__(self, cleanup: Cleanup, notes: list[str]) -> None:
        self.cleanup = cleanup
        self.notes = notes
        os.environ["KETCH_HOME"] = str(cleanup.ketch_home)
        os.environ["KETCH_RUNTIME"] = "local"
        os.environ.pop("KETCH_SERVER_URL", None)
        _ensure_ketch_importable(notes)
        import ketch

        t0 = time.perf_counter()
        self.dict = ketch.Dict.from_name(client.KETCH_DICT, create_if_missing=True).hydrate()
        self.queue = ketch.Queue.from_name(client.KETCH_QUEUE, create_if_missing=True).hydrate()
        notes.append(
            f"ketch: control plane start + Dict/Queue lookup took "
            f"{(time.perf_counter() - t0) * 1e3:.0f} ms (not counted)"
        )
        info = json.loads((cleanup.ketch_home / "server.json").read_text())
        self.pid = int(info["pid"])
        self.port = 0  # clients find it through KETCH_HOME

    def sizes(self) -> tuple[int, int]:
        return self.dict.len(), self.queue.len()

    def stop(self) -> None:
        self.notes.extend(
            self.cleanup.stop_plane(
                lambda: h.stop_control_plane(self.cleanup.ketch_env()),
                "ketch process still running 10 s after `ketch server stop`",
            )
        )


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a free port, in a directory of its own."""

    def __init__(self, system: str, cleanup: Cleanup, notes: list[str]) -> None:
        import redis

        self.notes = notes
        self.dir = cleanup.workdir / system
        self.dir.mkdir(parents=True)
        self.port = h.free_port()
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            *REDIS_ARGS[system],
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--daemonize",
            "no",
        ]
        self.command = " ".join(a if a else "''" for a in argv[1:])
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        cleanup.started.append(self.proc)
        self.pid = self.proc.pid
        self.conn = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    self.conn.ping()
                    break
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start (exit {self.proc.poll()}):\n"
                            f"{tail(self.dir / 'redis.log')}"
                        ) from None
                    time.sleep(0.05)
            self.version = self.conn.info("server")["redis_version"]
        except BaseException:
            self.stop()
            raise

    def sizes(self) -> tuple[int, int]:
        keys = sum(1 for _ in self.conn.scan_iter(f"{client.REDIS_DICT_PREFIX}*", count=1000))
        return keys, int(self.conn.llen(client.REDIS_QUEUE))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis shuts down (no RDB with --save '')
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.notes.append(f"redis-server {self.port} still running 10 s after SIGTERM; killed")


# --------------------------------------------------------------------------
# measuring


def run_phase(
    op: str, clients: list[Client], server_pid: int, extra: list[dict], duration: float
) -> tuple[dict, list[int]]:
    """One operation on every client at once; the summary and each client's op count."""
    start_at = time.monotonic() + START_DELAY_S
    for c, more in zip(clients, extra, strict=True):
        c.send({"op": op, "start_at": start_at, "duration": duration, **more})
    time.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = cpu_seconds(server_pid)
    replies = [c.recv(duration + 120) for c in clients]
    server_cpu = cpu_seconds(server_pid) - cpu0

    counts = [r["ops"] for r in replies]
    total = sum(counts)
    span = max(r["t1"] for r in replies) - min(r["t0"] for r in replies)
    client_cpu = sum(r["cpu_s"] for r in replies)
    lat = [x for r in replies for x in r["lat_us"]]
    if not total:
        raise RuntimeError(f"{op}: no operation finished")
    return {
        "ops": total,
        "seconds": span,
        "rate": total / span,
        "per_client": counts,
        "p50_ms": h.percentile(lat, 50) / 1e3,
        "p99_ms": h.percentile(lat, 99) / 1e3,
        "server_cpu_us_per_op": server_cpu / total * 1e6,
        "client_cpu_us_per_op": client_cpu / total * 1e6,
        "server_busy_cpus": server_cpu / span,
        "busy_cpus": (server_cpu + client_cpu) / span,
    }, counts


def run_system(
    system: str, sizes: Sizes, n_clients: int, cleanup: Cleanup, results: dict, notes: list[str]
) -> None:
    label = SYSTEM_LABELS[system]
    if system == "ketch":
        log("ketch: starting the control plane (KETCH_RUNTIME=local)")
        server: KetchServer | RedisServer = KetchServer(cleanup, notes)
    else:
        server = RedisServer(system, cleanup, notes)
        log(f"{label}: redis-server {server.version} on 127.0.0.1:{server.port}")
        notes.append(f"{label}: redis-server {server.version}, `redis-server {server.command}`")
    clients: list[Client] = []
    try:
        log(f"{label}: {n_clients} clients connecting and warming up")
        clients = [Client(system, i, server.port, cleanup) for i in range(n_clients)]
        for c in clients:
            c.recv(READY_TIMEOUT_S)
        budget = OPS_BUDGET // n_clients
        counts: dict[str, list[int]] = {}
        for op, _, _ in OPS:
            if op == "dict_get":  # read back only keys each client wrote
                extra = [
                    {"max_ops": budget, "keys": min(n, KEYS_PER_CLIENT)} for n in counts["dict_put"]
                ]
            elif op == "queue_get":  # at most what each client put, so the queue never runs dry
                extra = [{"max_ops": min(budget, n)} for n in counts["queue_put"]]
            else:
                extra = [{"max_ops": budget, "keys": KEYS_PER_CLIENT} for _ in clients]
            log(f"{label}: {op}, {sizes.duration:g} s or {budget:,} ops per client")
            results[system][op], counts[op] = run_phase(
                op, clients, server.pid, extra, sizes.duration
            )
        for c in clients:
            note = c.close()
            if note:
                notes.append(note)
        clients = []

        # What the phases left behind must add up.
        want_keys = sum(min(n, KEYS_PER_CLIENT) for n in counts["dict_put"])
        want_items = sum(counts["queue_put"]) - sum(counts["queue_get"])
        keys, items = server.sizes()
        if (keys, items) != (want_keys, want_items):
            raise AssertionError(
                f"{label}: dict holds {keys} keys, queue {items} items; "
                f"expected {want_keys} and {want_items}"
            )
        notes.append(
            f"{label}: checked afterwards: {keys:,} dict keys, "
            f"{sum(counts['queue_put']):,} items put, {sum(counts['queue_get']):,} taken, "
            f"{items:,} left"
        )
    finally:
        for c in clients:
            note = c.close()
            if note:
                notes.append(note)
        server.stop()


# --------------------------------------------------------------------------
# report


def _rate(results: dict, system: str, op: str) -> float | None:
    entry = results[system].get(op)
    return entry["rate"] if entry else None


def _cell(results: dict, system: str, op: str, fmt: str, *keys: str) -> str:
    entry = results[system].get(op)
    if entry is None:
        if "skipped" in results[system]:
            return "skipped"
        return "error" if "error" in results[system] else "—"
    return " / ".join(format(entry[k], fmt) for k in keys)


def _ratio(results: dict, peer: str, op: str) -> tuple[str, bool | None]:
    k, r = _rate(results, "ketch", op), _rate(results, peer, op)
    if k is None or r is None:
        return "—", None
    ratio = r / k
    return f"{ratio:.1f} x", ratio <= TARGET_RATIO


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def render(results: dict) -> str:
    header = (
        "operation (Redis command)",
        "ketch ops/s",
        "Redis ops/s",
        "Redis AOF everysec ops/s",
        "Redis / ketch",
        "Redis AOF / ketch",
        f"target: ketch within {TARGET_RATIO:g} x of Redis",
    )
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * 5 + ["---"]) + "|",
    ]
    for op, name, cmd in OPS:
        plain, plain_ok = _ratio(results, "redis", op)
        aof, aof_ok = _ratio(results, "redis_aof", op)
        verdict = _verdict(plain_ok)
        if aof_ok is not None:
            verdict += f" (vs AOF: {_verdict(aof_ok)})"
        row = [
            f"{name} ({cmd})",
            *(_cell(results, s, op, ",.0f", "rate") for s in SYSTEMS),
            plain,
            aof,
            verdict,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_detail(results: dict) -> str:
    header = (
        "operation",
        "system",
        "p50 / p99 ms",
        "server CPU µs/op",
        "client CPU µs/op",
        "busy CPUs: server / all",
        "ops",
        "s",
    )
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * 6) + "|",
    ]
    for op, name, _ in OPS:
        for system in SYSTEMS:
            if op not in results[system]:
                continue
            e = results[system][op]
            row = [
                name,
                SYSTEM_LABELS[system],
                f"{e['p50_ms']:.3f} / {e['p99_ms']:.3f}",
                f"{e['server_cpu_us_per_op']:.0f}",
                f"{e['client_cpu_us_per_op']:.0f}",
                f"{e['server_busy_cpus']:.2f} / {e['busy_cpus']:.2f}",
                f"{e['ops']:,}",
                f"{e['seconds']:.2f}",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK.duration:g} s per phase"
    )
    ap.add_argument(
        "--duration",
        type=float,
        help=f"seconds per phase (default {FULL.duration:g}, --quick {QUICK.duration:g})",
    )
    ap.add_argument(
        "--clients", type=int, default=CLIENTS, help=f"client processes (default {CLIENTS})"
    )
    ap.add_argument(
        "--only",
        metavar="LIST",
        help="comma-separated subset of " + ",".join(SYSTEMS) + " (default: all)",
    )
    h.add_run_options(ap, timeout=600.0, keep_help="keep the temporary KETCH_HOME / Redis dirs")
    args = ap.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.duration:
        sizes = Sizes(duration=args.duration)
    if args.clients < 1:
        ap.error("--clients must be at least 1")
    chosen = (
        SYSTEMS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    )
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")

    machine = h.machine_line(load=True)  # before the run, so the load average is the machine's own
    workdir = Path(tempfile.mkdtemp(prefix="ketch-dq-"))
    cleanup = Cleanup(workdir, keep=args.keep)
    watchdog = h.Watchdog(args.timeout, cleanup, log, gap=True)

    results: dict = {s: {} for s in SYSTEMS}
    notes: list[str] = []
    t_start = time.perf_counter()

    redis_missing = None
    if shutil.which("redis-server") is None:
        redis_missing = "no redis-server on PATH (`bash scripts/system-deps` installs it)"
    elif importlib.util.find_spec("redis") is None:
        redis_missing = (
            "redis-py is not installed (`pip install redis`, or `pip install -e '.[bench]'`)"
        )

    def body() -> None:
        for system in chosen:
            if system != "ketch" and redis_missing:
                results[system]["skipped"] = redis_missing
                notes.append(f"{SYSTEM_LABELS[system]} skipped: {redis_missing}")
                continue
            try:
                run_system(system, sizes, args.clients, cleanup, results, notes)
            except Exception as exc:  # noqa: BLE001 - report, go on with the next system
                traceback.print_exc()
                results[system]["error"] = f"{type(exc).__name__}: {exc}"

    aborted = h.guarded(body, cleanup, watchdog, notes)

    total = time.perf_counter() - t_start
    h.print_head(
        f"ketch Dict/Queue vs Redis, {args.clients} client processes", args.quick, machine, total
    )
    print(
        f"Each phase: {sizes.duration:g} s or {OPS_BUDGET // args.clients:,} operations per client, "
        f"whichever ends first; {client.PAYLOAD_BYTES}-byte values; Dict keys cycle over "
        f"{KEYS_PER_CLIENT:,} per client. ops/s = all clients' operations / (last client's end "
        "- first client's start).\n"
    )
    print(render(results))
    print()
    detail = render_detail(results)
    if detail:
        print(
            "Per operation, same phases: latency seen by a client; CPU time of the server "
            "process (all its threads) and of the clients, per operation; CPUs kept busy "
            "(CPU seconds / phase seconds).\n"
        )
        print(detail)
        print()
    for system in SYSTEMS:
        if "error" in results[system]:
            print(f"- {system} failed: {results[system]['error'].splitlines()[0][:300]}")
    for note in notes:
        print(f"- {note}")
    redis_py = importlib.util.find_spec("redis")
    if redis_py is not None and any(s != "ketch" for s in chosen):
        import redis

        hiredis = importlib.util.find_spec("hiredis") is not None
        print(f"- redis-py {redis.__version__}, {'with' if hiredis else 'without'} hiredis")

    if args.json:
        head = {"sizes": asdict(sizes), "clients": args.clients, "ops_budget": OPS_BUDGET}
        h.write_json(args.json, head, machine, total, results, notes)
    if aborted:
        return 124
    failed = any("error" in results[s] for s in chosen)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
