#!/usr/bin/env python
"""Transport benchmark: ketch's RPC frames and blocking fast path beside plain HTTP.

Usage::

    .venv/bin/python benchmarks/transport.py            # full run (about 10-20 s)
    .venv/bin/python benchmarks/transport.py --quick    # smoke run
    .venv/bin/python benchmarks/transport.py --n 5000 --json out.json

One embedded control plane (``KETCH_RUNTIME=local``, a throw-away
``KETCH_HOME``, started with ``ketch server start`` and stopped with ``ketch
server stop``) holds a ``ketch.Dict`` with one small entry. Every mode makes
the same sequential ``DictGet`` (the body the SDK sends: the pickled key and
the dict's id) and checks the value it gets back:

* the SDK from blocking code, as users call it (frames on the unix socket,
  through ``_sync``'s blocking-socket fast path); the same with that fast path
  switched off (frames on asyncio streams, on the thread's own loop); through
  the shared background loop (``_sync.run_sync(..., background=True)``, the
  generic bridge); and from async code (``await d.get.aio``);
* frames without the SDK, on a blocking socket (``_client._call_blocking``),
  over the unix socket and over TCP;
* plain HTTP, ``POST /rpc/DictGet`` with a msgpack body and the owner's
  Bearer token: aiohttp with a kept-alive session on the unix socket, and
  ``http.client`` with a kept-alive connection over TCP.

Per mode: latency p50 / p99 over all timed calls, the control plane's CPU per
request (all its threads; ``/proc/PID/task/*/schedstat``, nanoseconds, with
``/proc/PID/stat`` ticks kept in the JSON as a cross-check) and this
process's CPU per request (``time.process_time()``: all its threads, so the
background loop's too). The modes run in round-robin batches, the order
rotated each round, so load from elsewhere on the machine hits them alike;
the CPU figures are medians over the batches. Processes this run started are
ended by pid if they outlive ``ketch server stop``; ``--timeout`` (default
300 s) interrupts a stuck run, cleans up and exits 124.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # run as a file from elsewhere, or with -P
    sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402
import aiohttp  # noqa: E402

import ketch  # noqa: E402
from ketch import _client, _sync  # noqa: E402
from ketch._serialization import deserialize, pack, serialize, unpack  # noqa: E402
from ketch._wire import encode  # noqa: E402

KEY = "k"
VALUE = "v" * 16
# A mechanism earns its keep if the alternative costs at least this much more.
WORTH = 1.2


@dataclass(frozen=True)
class Sizes:
    warmup: int  # untimed calls per mode before the first round
    calls: int  # timed calls per mode, over all rounds
    rounds: int  # batches per mode, interleaved round-robin


FULL = Sizes(warmup=300, calls=3000, rounds=10)
QUICK = Sizes(warmup=50, calls=300, rounds=3)

# (key, label); the order is the table's
MODES = (
    ("sdk_blocking", "SDK blocking `d.get`: frames, blocking socket (unix)"),
    ("sdk_streams", "SDK blocking, fast path off: frames, asyncio streams on the thread's loop"),
    ("sdk_background", "SDK via the background loop: `run_sync(background=True)`"),
    ("sdk_async", "SDK async `await d.get.aio` (unix)"),
    ("frames_unix", "frames, no SDK: `_call_blocking` (unix)"),
    ("aiohttp_unix", "HTTP: aiohttp keep-alive session (unix)"),
    ("frames_tcp", "frames, no SDK: `_call_blocking` (TCP)"),
    ("http_tcp", "HTTP: `http.client` keep-alive (TCP)"),
)

log = h.logger("transport")


# --------------------------------------------------------------------------
# the control plane


@dataclass(frozen=True)
class Plane:
    pid: int
    url: str  # http://127.0.0.1:PORT
    socket: str  # the API's unix socket
    token: str  # the owner's


def start_plane(cleanup: h.ServerCleanup) -> Plane:
    """``ketch server start`` in the run's KETCH_HOME; where it listens."""
    cli = Path(sys.executable).parent / "ketch"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "ketch.cli.main"]
    subprocess.run(
        [*cmd, "server", "start"],
        env=cleanup.ketch_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    info = json.loads((cleanup.ketch_home / "server.json").read_text())
    token = (cleanup.ketch_home / "token").read_text().strip()
    return Plane(int(info["pid"]), info["url"], info["socket"], token)


def server_cpu_s(pid: int) -> float:
    """CPU time of all the process's live threads, from their schedstat (ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def stat_cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (clock ticks: 10 ms steps)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# the modes


def timed(call: Callable[[], Any], n: int) -> list[float]:
    """``n`` sequential ``call()``s, each checked; seconds per call."""
    out: list[float] = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        got = call()
        t1 = clock()
        if got != VALUE:
            raise AssertionError(f"DictGet returned {got!r}")
        out.append(t1 - t0)
    return out


async def timed_async(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out: list[float] = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        got = await call()
        t1 = clock()
        if got != VALUE:
            raise AssertionError(f"DictGet returned {got!r}")
        out.append(t1 - t0)
    return out


def checked(status: int, reply: dict[str, Any]) -> Any:
    """The value of a DictGet reply, as the SDK unpacks it."""
    if status != 200 or not reply.get("found"):
        raise RuntimeError(f"DictGet answered {status}: {reply!r}")
    return deserialize(reply["value"])


@contextlib.contextmanager
def fast_path_off() -> Iterator[None]:
    """The SDK's blocking calls on their own loop use asyncio streams, as ``.aio`` calls do."""
    saved = _sync.blocking_allowed
    _sync.blocking_allowed = lambda: False  # _client looks it up on every call
    try:
        yield
    finally:
        _sync.blocking_allowed = saved


class Modes:
    """Each way to make the DictGet, as ``run(key, n) -> seconds per call``; holds their connections."""

    def __init__(self, d: Any, plane: Plane) -> None:
        self.d = d
        self.impl = d._ketch_impl  # the async _Dict behind the blocking wrapper
        self.plane = plane
        self.body = {"key": serialize(KEY, "a Dict key"), "object_id": d.object_id}
        self.headers = {
            "Authorization": f"Bearer {plane.token}",
            "Content-Type": "application/msgpack",
        }
        self.loop = asyncio.new_event_loop()  # the async modes' loop, kept across batches
        self.session: aiohttp.ClientSession | None = None
        self.conn: http.client.HTTPConnection | None = None

    def run(self, key: str, n: int) -> list[float]:
        return getattr(self, key)(n)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.session is not None:
            self.loop.run_until_complete(self.session.close())
        self.loop.close()

    # -- through the SDK

    def sdk_blocking(self, n: int) -> list[float]:
        return timed(lambda: self.d.get(KEY), n)

    def sdk_streams(self, n: int) -> list[float]:
        with fast_path_off():
            return timed(lambda: self.d.get(KEY), n)

    def sdk_background(self, n: int) -> list[float]:
        return timed(lambda: _sync.run_sync(self.impl.get(KEY), background=True), n)

    def sdk_async(self, n: int) -> list[float]:
        return self.loop.run_until_complete(timed_async(lambda: self.d.get.aio(KEY), n))

    # -- frames without the SDK

    def _frames(self, unix: str | None, n: int) -> list[float]:
        p = self.plane

        def get() -> Any:
            request = encode({"m": "DictGet", "b": self.body})
            return checked(*_client._call_blocking(unix, p.url, request, 120.0, p.token))

        return timed(get, n)

    def frames_unix(self, n: int) -> list[float]:
        return self._frames(self.plane.socket, n)

    def frames_tcp(self, n: int) -> list[float]:
        return self._frames(None, n)

    # -- plain HTTP

    def aiohttp_unix(self, n: int) -> list[float]:
        async def open_session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(self.plane.socket), headers=self.headers
            )

        if self.session is None:
            self.session = self.loop.run_until_complete(open_session())
        session = self.session

        async def get() -> Any:
            async with session.post("http://ketch/rpc/DictGet", data=pack(self.body)) as resp:
                return checked(resp.status, unpack(await resp.read()))

        return self.loop.run_until_complete(timed_async(get, n))

    def http_tcp(self, n: int) -> list[float]:
        if self.conn is None:
            host, port = _client._host_port(self.plane.url)
            self.conn = http.client.HTTPConnection(host, port, timeout=30)
            self.conn.connect()
            assert self.conn.sock is not None
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.conn

        def get() -> Any:
            conn.request("POST", "/rpc/DictGet", body=pack(self.body), headers=self.headers)
            resp = conn.getresponse()
            return checked(resp.status, unpack(resp.read()))

        return timed(get, n)


# --------------------------------------------------------------------------
# measuring


@dataclass
class Batch:
    n: int
    latencies: list[float]
    server_s: float
    server_stat_s: float
    client_s: float


def measure_batch(modes: Modes, key: str, n: int) -> Batch:
    pid = modes.plane.pid
    gc.collect()
    s0, t0, c0 = server_cpu_s(pid), stat_cpu_s(pid), time.process_time()
    latencies = modes.run(key, n)
    c1, t1, s1 = time.process_time(), stat_cpu_s(pid), server_cpu_s(pid)
    return Batch(n, latencies, s1 - s0, t1 - t0, c1 - c0)


def measure(modes: Modes, sizes: Sizes, batches: dict[str, list[Batch]]) -> None:
    """Warm-up, then ``rounds`` rounds of one batch per mode, the order rotated each round."""
    keys = [key for key, _ in MODES]
    log(f"warm-up: {sizes.warmup} calls per mode")
    for key in keys:
        modes.run(key, sizes.warmup)
    per_batch = max(1, sizes.calls // sizes.rounds)
    for r in range(sizes.rounds):
        log(f"round {r + 1}/{sizes.rounds}: {per_batch} calls per mode")
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            batches[key].append(measure_batch(modes, key, per_batch))


def summarize(batches: list[Batch]) -> dict[str, Any]:
    lat = [x for b in batches for x in b.latencies]
    n = sum(b.n for b in batches)
    return {
        "n": n,
        "p50_us": h.percentile(lat, 50) * 1e6,
        "p99_us": h.percentile(lat, 99) * 1e6,
        "mean_us": sum(lat) / len(lat) * 1e6,
        "server_cpu_us": statistics.median(b.server_s / b.n for b in batches) * 1e6,
        "server_cpu_us_batches": [b.server_s / b.n * 1e6 for b in batches],
        "server_cpu_us_ticks": sum(b.server_stat_s for b in batches) / n * 1e6,
        "client_cpu_us": statistics.median(b.client_s / b.n for b in batches) * 1e6,
        "client_cpu_us_batches": [b.client_s / b.n * 1e6 for b in batches],
        "batch_p50_us": [h.percentile(b.latencies, 50) * 1e6 for b in batches],
    }


def run(sizes: Sizes, cleanup: h.ServerCleanup, results: dict, notes: list[str]) -> None:
    os.environ["KETCH_HOME"] = str(cleanup.ketch_home)
    os.environ["KETCH_RUNTIME"] = "local"
    for name in ("KETCH_SERVER_URL", "KETCH_TOKEN", "KETCH_CONTAINER_TOKEN"):
        os.environ.pop(name, None)
    log("starting the control plane (`ketch server start`)")
    plane = start_plane(cleanup)

    idle_s = 0.3 if sizes is QUICK else 1.0
    s0 = server_cpu_s(plane.pid)
    time.sleep(idle_s)
    idle = (server_cpu_s(plane.pid) - s0) / idle_s * 1e6
    notes.append(f"the control plane idle: {idle:.0f} µs of CPU per second (not subtracted)")

    d = ketch.Dict.from_name("transport-bench", create_if_missing=True)
    d.put(KEY, VALUE)
    modes = Modes(d, plane)
    batches: dict[str, list[Batch]] = {key: [] for key, _ in MODES}
    try:
        measure(modes, sizes, batches)
    finally:
        modes.close()
        for key, got in batches.items():
            if got:
                results[key] = summarize(got)


# --------------------------------------------------------------------------
# report


FRAMES = ("sdk_blocking", "sdk_streams", "sdk_background", "sdk_async", "frames_unix", "frames_tcp")
HTTP = ("aiohttp_unix", "http_tcp")


def verdict(results: dict) -> str:
    """One line from the numbers: does each mechanism save at least ``WORTH`` x?

    The control plane's CPU per request grows as requests come further apart
    (a sleeping process wakes up colder), and the HTTP rows are the slowest, so
    frames are judged by their costliest row against HTTP's cheapest.
    """
    if any(key not in results for key in (*FRAMES, *HTTP)):
        return "Verdict: n/a (modes missing)"

    def ratio(slow: str, fast: str, metric: str) -> float:
        return float(results[slow][metric] / results[fast][metric])

    worst_frames = max(FRAMES, key=lambda k: results[k]["server_cpu_us"])
    best_http = min(HTTP, key=lambda k: results[k]["server_cpu_us"])
    server = ratio(best_http, worst_frames, "server_cpu_us")
    lat = ratio("sdk_background", "sdk_blocking", "p50_us")
    cpu = ratio("sdk_background", "sdk_blocking", "client_cpu_us")
    frames_ok = server >= WORTH
    fast_ok = lat >= WORTH or cpu >= WORTH
    return (
        f"Verdict: frames {'earn their keep' if frames_ok else 'do NOT earn their keep'} "
        f"(HTTP's cheapest row, {best_http}, costs the control plane {server:.2f} x the CPU per "
        f"request of frames' costliest, {worst_frames}); the blocking fast path "
        f"{'earns its keep' if fast_ok else 'does NOT earn its keep'} (the background loop has "
        f"{lat:.2f} x its p50 and {cpu:.2f} x its client CPU); bar: {WORTH:g} x."
    )


def render(results: dict) -> str:
    lines = [
        "| mode | p50 µs | p99 µs | server CPU µs/request | client CPU µs/request |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in MODES:
        r = results.get(key)
        if r is None:
            lines.append(f"| {label} | — | — | — | — |")
            continue
        lines.append(
            f"| {label} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
            f"{r['server_cpu_us']:.0f} | {r['client_cpu_us']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer calls")
    ap.add_argument(
        "--n", type=int, metavar="N", help="timed calls per mode (default 3000; --quick 300)"
    )
    h.add_run_options(ap, timeout=300.0, keep_help="keep the temporary KETCH_HOME")
    args = ap.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.n:
        sizes = replace(sizes, calls=args.n)
    workdir = Path(tempfile.mkdtemp(prefix="ketch-bench-transport-"))
    cleanup = h.ServerCleanup(workdir, keep=args.keep)
    watchdog = h.Watchdog(args.timeout, cleanup, log)
    machine = h.machine_line(load=True)

    results: dict[str, Any] = {}
    notes: list[str] = []
    t_start = time.perf_counter()
    error = None

    def body() -> None:
        nonlocal error
        try:
            run(sizes, cleanup, results, notes)
        except Exception as exc:  # noqa: BLE001 - report what was measured, then fail
            import traceback

            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"

    aborted = h.guarded(body, cleanup, watchdog, notes)

    total = time.perf_counter() - t_start
    h.print_head(
        "ketch RPC transport: frames and the blocking fast path beside HTTP",
        args.quick,
        machine,
        total,
    )
    print(render(results))
    print()
    print(verdict(results))
    print()
    per_batch = max(1, sizes.calls // sizes.rounds)
    print(
        f"- {sizes.rounds} rounds of {per_batch} calls per mode after {sizes.warmup} warm-up calls; "
        "CPU columns are medians over the rounds"
    )
    if error:
        print(f"- failed: {error.splitlines()[0][:300]}")
    for note in notes:
        print(f"- {note}")
    if args.json:
        h.write_json(args.json, {"sizes": asdict(sizes)}, machine, total, results, notes)
    if aborted:
        return 124
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
