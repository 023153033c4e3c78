#!/usr/bin/env python
"""Sandboxes: create to first output, exec round trip, a pool at once, stdout throughput.

Usage::

    .venv/bin/python benchmarks/sandbox.py            # n=20
    .venv/bin/python benchmarks/sandbox.py --quick    # n=5

ketch runs with ``KETCH_RUNTIME=sandbox`` in a throw-away ``KETCH_HOME`` (the
image cache stays the machine's, so the Debian base is built once). Beside it,
in the same run: a bare ``bwrap`` of the host's ``/`` running ``echo`` (the
floor: the kernel work a sandbox start cannot avoid, without an image, a
control plane or an agent) and ``subprocess.run`` on the host.

Rows:

* create -> first output: ``Sandbox.create(app=app)`` then ``exec("echo", "hi")``
  until its output is read (a new container each time; the image is cached);
* exec round trip: ``exec("true").wait()`` in a warm sandbox;
* pool: 20 sandboxes created at once (threads), until each answered an echo;
* stdout throughput: ``head -c 256M /dev/zero`` read whole through ``stdout.read()``;
* tunnel: a TCP echo server in a ``block_network`` sandbox reached through its
  tunnel (``encrypted_ports``), beside the same server run on the host and
  reached directly over loopback: a 1-byte round trip on an open connection,
  a new connection's first round trip, and 256 MiB sent by the server.

Targets (issue 16, 2-core machine): create -> first output <= 150 ms p50, exec
round trip <= 5 ms p50, stdout >= 200 MiB/s.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402

log = h.logger("sandbox")

MEASURE = r"""
import json, socket, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
import ketch

ECHO = '''
import socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print(s.getsockname()[1], flush=True)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = c.recv(1)
    if first == b"B":
        c.sendall(b"x" * (256 << 20))
        c.close()
        return
    c.sendall(first)
    while (d := c.recv(65536)):
        c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def through(host, port, n):
    c = socket.create_connection((host, port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"e")
    assert c.recv(1) == b"e"
    rtt = []
    for _ in range(n * 10):
        t0 = time.perf_counter()
        c.sendall(b"a")
        assert c.recv(1) == b"a"
        rtt.append(time.perf_counter() - t0)
    c.close()
    fresh = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = socket.create_connection((host, port))
        c.sendall(b"e")
        assert c.recv(1) == b"e"
        fresh.append(time.perf_counter() - t0)
        c.close()
    c = socket.create_connection((host, port))
    t0 = time.perf_counter()
    c.sendall(b"B")
    got = 0
    while (chunk := c.recv(1 << 20)):
        got += len(chunk)
    assert got == 256 << 20
    mib_s = 256 / (time.perf_counter() - t0)
    c.close()
    return {"rtt": rtt, "connect": fresh, "mib_s": [mib_s]}


n = int(sys.argv[1])
app = ketch.App("bench-sandbox")
out = {}
with app.run():
    warm = ketch.Sandbox.create(app=app)  # builds or finds the image
    assert warm.exec("echo", "hi").stdout.read() == "hi\n"

    def first_output():
        t0 = time.perf_counter()
        sb = ketch.Sandbox.create(app=app)
        got = sb.exec("echo", "hi").stdout.read()
        elapsed = time.perf_counter() - t0
        assert got == "hi\n", got
        sb.terminate()
        return elapsed

    out["create"] = [first_output() for _ in range(n)]
    rtt = []
    for _ in range(max(n * 5, 50)):
        t0 = time.perf_counter()
        assert warm.exec("true").wait() == 0
        rtt.append(time.perf_counter() - t0)
    out["exec"] = rtt
    t0 = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda _: first_output(), range(20)))
    out["pool20"] = [time.perf_counter() - t0]
    size = 256 << 20
    t0 = time.perf_counter()
    data = warm.exec("head", "-c", str(size), "/dev/zero", text=False).stdout.read()
    out["throughput_mib_s"] = [len(data) / (1 << 20) / (time.perf_counter() - t0)]
    assert len(data) == size
    warm.terminate()
    served = ketch.Sandbox.create(
        "python3", "-c", ECHO, "9000", app=app, block_network=True,
        encrypted_ports=[9000], readiness_probe=ketch.Probe.with_tcp(9000),
    )
    served.wait_until_ready(timeout=60)
    tunnel = served.tunnels()[9000]
    out["tunnel"] = through(tunnel.host, tunnel.port, n)
    served.terminate()
host = subprocess.Popen([sys.executable, "-c", ECHO, "0"], stdout=subprocess.PIPE, text=True)
out["direct"] = through("127.0.0.1", int(host.stdout.readline()), n)
host.kill()
host.wait()
host.stdout.close()
print("SANDBOX " + json.dumps(out))
"""


def _timed(argv: list[str], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n=5 instead of 20")
    args = ap.parse_args(argv)
    n = 5 if args.quick else 20
    home = Path(tempfile.mkdtemp(prefix="ketch-bench-sbx-", dir="/tmp"))
    # 22 sandboxes at once at most (the pool, the warm one, the tunnel one): over the
    # default node cap of 4 x CPUs on a 2-core machine.
    env = {**h.ketch_env(home), "KETCH_RUNTIME": "sandbox", "KETCH_MAX_CONTAINERS_PER_NODE": "32"}
    started = time.perf_counter()
    try:
        log(f"ketch: {n} creates, exec round trips, a pool of 20, 256 MiB of stdout")
        result = h.run_script(MEASURE, [str(n)], "SANDBOX ", "sandbox trial", env, home, 1800)
    finally:
        h.stop_control_plane(env)
        shutil.rmtree(home, ignore_errors=True)
    log("peers: bare bwrap and subprocess.run")
    bwrap = shutil.which("bwrap") or "bwrap"
    floor = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    floor += ["--unshare-all", "--die-with-parent", "echo", "hi"]
    peer_bwrap = _timed(floor, n)
    peer_echo = _timed(["echo", "hi"], n)
    peer_true = _timed(["true"], max(n * 5, 50))
    h.print_head(
        "Sandboxes: ketch beside bare bubblewrap and the host",
        args.quick,
        h.machine_line(),
        time.perf_counter() - started,
    )
    print("| metric | p50 ms | p90 ms | n |")
    print("|---|---:|---:|---:|")
    print(h.ms_row("ketch: Sandbox.create -> first output of exec('echo')", result["create"]))
    print(h.ms_row("floor: bare `bwrap ... echo hi` of the host's /", peer_bwrap))
    print(h.ms_row("host: `subprocess.run(['echo', 'hi'])`", peer_echo))
    print(h.ms_row("ketch: exec('true').wait() in a warm sandbox", result["exec"]))
    print(h.ms_row("host: `subprocess.run(['true'])`", peer_true))
    print(h.ms_row("ketch: 20 sandboxes created at once, all answered (wall)", result["pool20"]))
    print(
        f"| ketch: stdout throughput, MiB/s (256 MiB) | {result['throughput_mib_s'][0]:,.0f} | — | 1 |"
    )
    tunnel, direct = result["tunnel"], result["direct"]
    print(h.ms_row("ketch tunnel: 1-byte round trip, open connection", tunnel["rtt"]))
    print(h.ms_row("host loopback: 1-byte round trip, open connection", direct["rtt"]))
    print(h.ms_row("ketch tunnel: new connection's first round trip", tunnel["connect"]))
    print(h.ms_row("host loopback: new connection's first round trip", direct["connect"]))
    for name, got in (("ketch tunnel", tunnel), ("host loopback", direct)):
        print(f"| {name}: 256 MiB from the server, MiB/s | {got['mib_s'][0]:,.0f} | — | 1 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
