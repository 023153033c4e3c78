#!/usr/bin/env python
"""ketch on a Ray cluster beside the embedded default and beside plain Ray, in one run.

Usage (as root: the run makes a network namespace)::

    .venv/bin/python benchmarks/cluster.py            # n=200 warm calls, 2,000-input maps
    .venv/bin/python benchmarks/cluster.py --quick

Ray's servers listen on every address, so the whole run happens in a network
namespace made for it, where only a loopback exists: a Ray cluster of two
``ray start`` nodes (2 CPUs each), a ketch control plane started with
``--ray`` and one without (the embedded default, the ``sandbox`` runtime),
and the clients. The image and the ketch bundle are built first, outside the
namespace (it has no way to PyPI or Debian).

Rows:

* **cold start**: a new app's first ``f.remote(x)`` (a new container: placed,
  started, imported), p50 of ``--colds`` apps; beside Ray's own actor start
  (``A.remote()`` to its first method result);
* **warm ``.remote()``**: p50/p90 of ``--calls`` calls to a running container;
  beside a Ray task (``ray.get(f.remote(i))``) and an actor method call;
* **map throughput**: ``f.map(range(--inputs))`` of a trivial function, inputs/s;
  beside as many Ray tasks submitted at once.

Targets (issue 17): warm p50 <= 2 ms; map >= 50 % of the embedded default;
cold start <= Ray's actor start + 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PORT = 6390

CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import ketch

    app = ketch.App("bench-cluster")  # each run is a new ephemeral app: its pool starts cold

    @app.function()
    def f(x):
        return x

    def main(calls, inputs):
        with app.run():
            t = time.perf_counter(); f.remote(0); cold = time.perf_counter() - t
            warm = []
            for i in range(calls):
                t = time.perf_counter(); f.remote(i); warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert list(f.map(range(inputs))) == list(range(inputs))
            rate = inputs / (time.perf_counter() - t) if inputs else 0.0
        print("RESULT " + json.dumps({"cold": cold, "warm": warm, "rate": rate}))

    if __name__ == "__main__":
        main(int(sys.argv[2]), int(sys.argv[3]))
    """
)

RAY_CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import ray

    ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
    calls, inputs, colds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    @ray.remote(num_cpus=1)  # as many workers as CPUs, started once and reused
    def f(x):
        return x

    @ray.remote(num_cpus=0.1)
    class A:
        def f(self, x):
            return x

    ray.get([f.remote(i) for i in range(8)])  # workers up
    task = []
    for i in range(calls):
        t = time.perf_counter(); ray.get(f.remote(i)); task.append(time.perf_counter() - t)
    starts = []
    for _ in range(colds):
        t = time.perf_counter(); a = A.remote(); ray.get(a.f.remote(0))
        starts.append(time.perf_counter() - t)
    method = []
    for i in range(calls):
        t = time.perf_counter(); ray.get(a.f.remote(i)); method.append(time.perf_counter() - t)
    t = time.perf_counter()
    assert ray.get([f.remote(i) for i in range(inputs)]) == list(range(inputs))
    rate = inputs / (time.perf_counter() - t)
    print("RESULT " + json.dumps({"task": task, "actor_start": starts, "method": method, "rate": rate}))
    """
)


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round((len(ordered) - 1) * q / 100)))] * 1000


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="ketch-bench-cluster-", dir="/tmp"))
        self.tag = self.dir.name
        self.env = dict(os.environ, KETCH_BENCH_RUN=self.tag, KETCH_RUNTIME="sandbox")
        self.env.pop("KETCH_SERVER_URL", None)
        self.env["PYTHONPATH"] = str(REPO / "src")
        self.env["KETCH_NODE_HOME"] = str(self.dir / "nodes")
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
        time.sleep(0.3)
        self.wrap = ["nsenter", "-t", str(self.holder.pid), "-n"]
        subprocess.run([*self.wrap, "ip", "link", "set", "lo", "up"], check=True)

    def sh(
        self, argv: list[str], home: str | None = None, inside: bool = True, timeout: float = 600
    ) -> str:
        env = dict(self.env)
        if home:
            env["KETCH_HOME"] = str(self.dir / home)
        done = subprocess.run(
            [*(self.wrap if inside else []), *argv],
            env=env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def result(self, out: str) -> dict:
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        return json.loads(line.removeprefix("RESULT "))

    def ketch_case(self, home: str) -> dict:
        (self.dir / "client.py").write_text(CLIENT)
        py = str(BIN / "python")
        a = self.args
        self.sh([py, "client.py", f"warm-{home}", "1", "0"], home)  # images on the nodes
        colds, first = [], None
        for i in range(a.colds):
            r = self.result(self.sh([py, "client.py", f"cold-{home}-{i}", "1", "0"], home))
            colds.append(r["cold"])
        first = self.result(
            self.sh([py, "client.py", f"main-{home}", str(a.calls), str(a.inputs)], home)
        )
        return {"cold": colds, "warm": first["warm"], "rate": first["rate"]}

    def main(self) -> None:
        a = self.args
        log("building the image and the ketch bundle outside the namespace")
        (self.dir / "client.py").write_text(CLIENT)
        self.sh([str(BIN / "python"), "client.py", "prewarm", "1", "0"], "prewarm", inside=False)
        self.sh([str(BIN / "ketch"), "server", "stop"], "prewarm", inside=False)
        log("starting a Ray cluster of two nodes (2 CPUs each) in the namespace")
        ray = str(BIN / "ray")
        common = ["--temp-dir", str(self.dir / "ray"), "--disable-usage-stats", "--num-cpus=2"]
        self.sh([ray, "start", "--head", f"--port={PORT}", "--include-dashboard=false", *common])
        self.sh([ray, "start", f"--address=127.0.0.1:{PORT}", *common])
        rows = {}
        log("ketch on the Ray cluster")
        self.sh([str(BIN / "ketch"), "server", "start", "--ray", f"127.0.0.1:{PORT}"], "on-ray")
        rows["ketch --ray"] = self.ketch_case("on-ray")
        self.sh([str(BIN / "ketch"), "server", "stop"], "on-ray")
        log("ketch, the embedded default (sandbox)")
        rows["ketch embedded"] = self.ketch_case("embedded")
        self.sh([str(BIN / "ketch"), "server", "stop"], "embedded")
        log("plain Ray")
        (self.dir / "ray_client.py").write_text(RAY_CLIENT)
        ray_out = self.result(
            self.sh(
                [
                    str(BIN / "python"),
                    "ray_client.py",
                    f"127.0.0.1:{PORT}",
                    str(a.calls),
                    str(a.inputs),
                    str(a.colds),
                ]
            )
        )
        self.report(rows, ray_out)

    def report(self, rows: dict, r: dict) -> None:
        a = self.args
        print(
            f"# ketch on a Ray cluster (2 nodes x 2 CPUs, one machine: {os.cpu_count()} cores), "
            f"{time.strftime('%Y-%m-%d')}"
        )
        print(f"# cold: p50 of {a.colds}; warm: {a.calls} calls; map: {a.inputs} inputs\n")
        print("| case | cold start p50 (ms) | warm call p50 / p90 (ms) | map (inputs/s) |")
        print("|---|---:|---:|---:|")
        for name, row in rows.items():
            print(
                f"| {name} | {statistics.median(row['cold']) * 1000:.0f} | "
                f"{pct(row['warm'], 50):.2f} / {pct(row['warm'], 90):.2f} | {row['rate']:,.0f} |"
            )
        print(
            f"| Ray task | - | {pct(r['task'], 50):.2f} / {pct(r['task'], 90):.2f} | {r['rate']:,.0f} |"
        )
        print(
            f"| Ray actor | {statistics.median(r['actor_start']) * 1000:.0f} (actor start) | "
            f"{pct(r['method'], 50):.2f} / {pct(r['method'], 90):.2f} | - |"
        )
        on, emb = rows["ketch --ray"], rows["ketch embedded"]
        print(
            f"\nmap on Ray / embedded: {on['rate'] / emb['rate']:.0%} (target >= 50%); "
            f"cold start - Ray actor start: "
            f"{(statistics.median(on['cold']) - statistics.median(r['actor_start'])) * 1000:.0f} ms "
            f"(target <= 150); warm p50 {pct(on['warm'], 50):.2f} ms (target <= 2)"
        )

    def cleanup(self) -> None:
        servers = []
        for home in ("on-ray", "embedded", "prewarm"):
            info = self.dir / home / "server.json"
            if info.exists():
                try:
                    pid = json.loads(info.read_text())["pid"]
                    os.kill(pid, signal.SIGTERM)
                    servers.append(pid)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 30  # a control plane on Ray stops its nodes' workers first
        while servers and time.monotonic() < deadline:
            servers = [pid for pid in servers if Path(f"/proc/{pid}").exists()]
            time.sleep(0.2)
        marker = f"KETCH_BENCH_RUN={self.tag}".encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/environ", "rb") as fh:
                        if marker in fh.read().split(b"\0"):
                            os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        self.holder.kill()
        self.holder.wait()
        sys.path.insert(0, str(REPO / "src"))
        from ketch.cluster.agent import clear_leftovers

        for home in (self.dir / "nodes").glob("ketch-node-*"):
            clear_leftovers(home)
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--colds", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.calls, args.inputs, args.colds = 50, 500, 3
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/cluster.py runs as root (it makes a network namespace)")
    run = Run(args)
    try:
        run.main()
    finally:
        run.cleanup()


if __name__ == "__main__":
    main()
