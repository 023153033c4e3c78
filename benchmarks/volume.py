#!/usr/bin/env python
"""Volume benchmark: a 1 GiB file through a ketch.Volume beside a plain ``cp`` on the same disk.

Usage::

    .venv/bin/python benchmarks/volume.py            # 1 GiB, 3 rounds (about a minute)
    .venv/bin/python benchmarks/volume.py --quick    # 128 MiB, 1 round
    .venv/bin/python benchmarks/volume.py --json out.json

What is timed, for one file of random bytes (made before timing starts; every
path reads from the page cache, as ``cp`` does; every timed step starts after
``sync`` and a 2 s pause, because on a VM the host's flush of one step's writes
slows the next one down by up to 10x):

- peer: ``cp SRC DST`` on the same disk, and ``cp`` followed by ``sync`` (a
  Volume write is on disk before it is acknowledged, so this is the fair
  peer for writes).
- client write: ``vol.batch_upload()`` + ``put_file`` of the file until the
  commit returns (the blob is fsynced). A client on the control plane's
  machine writes the blob directory itself; run with ``KETCH_VOLUME_HTTP=1``
  to time the HTTP path that other machines and sandboxed containers use.
- client read: ``vol.read_file_into_fileobj`` into a new local file.
- container write: inside a function, copy the file into the mounted Volume
  and ``vol.commit()``; timed inside the function.
- container read: ``.remote()`` of a function in a fresh container that reads
  the whole file from its mount; timed from ``.remote()`` to the result, so it
  includes filling the container's working copy; the empty-Volume cold start
  of the same function is measured and reported beside it. Again with the
  Volume mounted ``read_only()``, whose working copy is hard links (as root).

The VM's copy speed drifts by 2-4x over minutes (the same ``cp`` of a cached
file took 0.6 s and 2.4 s ten minutes apart), so the peer is not timed once at
the start: every Volume step is paired with a run of its peer just before it,
and its ratio is the median of those pairs' ratios (peer time / Volume time).
Throughput columns are size / median time. Target: every Volume path >= 50 %
of ``cp``'s throughput (writes against ``cp`` + ``sync``). The control plane runs with
``KETCH_RUNTIME=local`` in a throw-away ``KETCH_HOME``; the Volume's data path
(blob store, working copy, bind mount) is the same under ``sandbox``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402

TARGET = 0.5
log = h.logger("volume")

APP = """
import os, shutil, time
import ketch

app = ketch.App("volume-bench")
vol = ketch.Volume.from_name("bench", create_if_missing=True)
rvol = ketch.Volume.from_name("bench-read", create_if_missing=True)
MOUNT = os.environ["BENCH_MOUNT"]


@app.function(volumes={MOUNT: vol}, scaledown_window=2)
def write(src: str) -> dict:
    t0 = time.perf_counter()
    shutil.copyfile(src, MOUNT + "/in-container.bin")
    t1 = time.perf_counter()
    vol.commit()
    return {"copy": t1 - t0, "commit": time.perf_counter() - t1}


def read_all(path: str) -> dict:
    t0 = time.perf_counter()
    n = 0
    if not path.endswith("/"):
        with open(path, "rb") as fh:
            while chunk := fh.read(8 << 20):
                n += len(chunk)
    return {"read": time.perf_counter() - t0, "bytes": n}


@app.function(volumes={MOUNT: rvol}, scaledown_window=2)
def read(name: str) -> dict:
    return read_all(MOUNT + "/" + name)


@app.function(volumes={MOUNT + "-ro": rvol.read_only()}, scaledown_window=2)
def read_ro(name: str) -> dict:
    return read_all(MOUNT + "-ro/" + name)
"""


class Cleanup(h.Cleanup):
    def __init__(self, workdir: Path, keep: bool) -> None:
        super().__init__(workdir, keep)
        self.ketch_home = workdir / "ketch-home"

    def markers(self) -> list[Path]:
        return [self.workdir]

    def stop_ketch_all(self) -> list[str]:
        return h.stop_control_plane(h.ketch_env(self.ketch_home))


SETTLE_S = 2.0


def settle() -> None:
    """``sync`` and a pause before every timed step: on a VM the host's flush of the last
    step's writes otherwise slows the next step down by up to 10x, whichever system it is."""
    subprocess.run(["sync"], check=True)
    time.sleep(SETTLE_S)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    settle()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="128 MiB, one round")
    ap.add_argument("--mib", type=int, help="file size in MiB (default 1024)")
    ap.add_argument("--rounds", type=int, help="rounds per measurement (default 3)")
    h.add_run_options(ap, timeout=900.0, keep_help="keep the temporary directory")
    args = ap.parse_args(argv)
    mib = args.mib or (128 if args.quick else 1024)
    rounds = args.rounds or (1 if args.quick else 3)

    machine = h.machine_line(load=True)
    workdir = Path(tempfile.mkdtemp(prefix="ketch-vol-", dir=os.environ.get("BENCH_DIR") or None))
    cleanup = Cleanup(workdir, keep=args.keep)
    watchdog = h.Watchdog(args.timeout, cleanup, log)
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    extra: dict[str, list[float]] = {}
    notes: list[str] = []
    t_start = time.perf_counter()

    def record(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)

    def peer(key: str, src: Path, dst: Path) -> float:
        """Time the peer of the next Volume step (``cp`` or ``cp`` + ``sync``) and record it."""
        cmd = f"cp {src} {dst}" + (" && sync" if key == "cp+sync" else "")
        seconds = timed(lambda: subprocess.run(cmd, shell=True, check=True))
        dst.unlink()
        subprocess.run(["sync"], check=True)
        record(key, seconds)
        return seconds

    def paired(key: str, peer_key: str, step: Callable[[], float]) -> None:
        """Time ``peer_key`` and then ``step`` (which returns its own seconds); record both and their ratio."""
        peer_s = peer(peer_key, src, dst)
        seconds = step()
        record(key, seconds)
        ratios.setdefault(key, []).append(peer_s / seconds)

    src = workdir / "src.bin"
    dst = workdir / "cp.bin"

    def body() -> None:
        log(f"making a {mib} MiB file of random bytes")
        with open(src, "wb") as fh:
            for _ in range(mib):
                fh.write(os.urandom(1 << 20))
        subprocess.run(["sync"], check=True)
        # Fresh guest memory can be slow to touch the first time on a VM: touch some first.
        scratch = workdir / "scratch.bin"
        subprocess.run(["cp", str(src), str(scratch)], check=True)
        subprocess.run(["cp", str(src), str(scratch) + "2"], check=True)
        scratch.unlink()
        Path(str(scratch) + "2").unlink()
        subprocess.run(["sync"], check=True)

        def vary() -> None:
            """Change the file's first bytes, so no round finds its blob already stored."""
            with open(src, "r+b") as fh:
                fh.write(os.urandom(16))

        os.environ.update(h.ketch_env(cleanup.ketch_home))
        os.environ["KETCH_RUNTIME"] = "local"
        os.environ["BENCH_MOUNT"] = str(workdir / "mnt")
        import ketch

        vol = ketch.Volume.from_name("bench", create_if_missing=True).hydrate()
        log("client write / read")
        out = workdir / "down.bin"

        def upload() -> None:
            with vol.batch_upload(force=True) as batch:
                batch.put_file(src, "/client.bin")

        def download() -> None:
            with open(out, "wb") as fh:
                vol.read_file_into_fileobj("client.bin", fh)

        for _ in range(rounds):
            vary()
            paired("client write", "cp+sync", lambda: timed(upload))
            subprocess.run(["sync"], check=True)

            paired("client read", "cp", lambda: timed(download))
            if out.stat().st_size != src.stat().st_size:
                raise RuntimeError("downloaded file has the wrong size")
            out.unlink()

        app_file = workdir / "volume_bench_app.py"
        app_file.write_text(APP)
        sys.path.insert(0, str(workdir))
        import volume_bench_app as mod  # type: ignore[import-not-found]

        log("container write / read")
        with mod.app.run():
            rvol = ketch.Volume.from_name("bench-read", create_if_missing=True)
            with rvol.batch_upload(force=True) as batch:
                batch.put_file(src, "/client.bin")
            for _ in range(rounds):
                vary()

                def write_in_container() -> float:
                    settle()
                    r = mod.write.remote(str(src))
                    extra.setdefault("container commit", []).append(r["commit"])
                    return float(r["copy"] + r["commit"])

                paired("container write", "cp+sync", write_in_container)
                subprocess.run(["sync"], check=True)
                time.sleep(3)  # let the container scale down: the next read starts a fresh one
                for key, fn, label in [
                    ("container read", mod.read, "read inside"),
                    ("container read, read-only mount", mod.read_ro, "read inside, read-only"),
                ]:

                    def read_in_container() -> float:
                        settle()
                        t0 = time.perf_counter()
                        r = fn.remote("client.bin")  # noqa: B023 (called at once, in this iteration)
                        extra.setdefault(label, []).append(r["read"])  # noqa: B023
                        return time.perf_counter() - t0

                    paired(key, "cp", read_in_container)
                    time.sleep(3)
            # the same function's cold start with nothing to read, for reference
            vol_empty = []
            for _ in range(rounds):
                settle()
                t0 = time.perf_counter()
                mod.read.remote("")
                vol_empty.append(time.perf_counter() - t0)
                time.sleep(3)
            extra["cold start, no read"] = vol_empty
            notes.append(
                "container read: from `.remote()` to the result, in a fresh container, so it includes "
                "a cold start and filling the working copy (a Volume holding just that file); as root a read-write "
                "working copy is an overlay over hard links to the blobs and a read-only one is the links, so "
                "filling either copies nothing"
            )

    aborted = h.guarded(body, cleanup, watchdog, notes)
    total = time.perf_counter() - t_start

    h.print_head(f"ketch Volume vs cp, one {mib} MiB file", args.quick, machine, total)
    size = mib / 1024
    print(
        "| path | median s | GiB/s | peer | peer GiB/s | ratio (median of pairs) | pairs | target >= 50% |"
    )
    print("|---|---:|---:|---|---:|---:|---|---|")
    rows = [
        ("cp", None),
        ("cp+sync", None),
        ("client write", "cp+sync"),
        ("client read", "cp"),
        ("container write", "cp+sync"),
        ("container read", "cp"),
        ("container read, read-only mount", "cp"),
    ]
    result = {}
    for key, peer_key in rows:
        if not times.get(key):
            continue
        t = statistics.median(times[key])
        peer_t = statistics.median(times[peer_key]) if peer_key else None
        ratio = statistics.median(ratios[key]) if ratios.get(key) else None
        ok = "" if ratio is None else ("met" if ratio >= TARGET else "MISSED")
        cells = [f"`{peer_key}`" if peer_key else "", f"{size / peer_t:.2f}" if peer_t else ""]
        cells += [
            f"{ratio:.0%}" if ratio is not None else "",
            ", ".join(f"{r:.0%}" for r in ratios.get(key, [])),
        ]
        print(f"| {key} | {t:.2f} | {size / t:.2f} | {' | '.join(cells)} | {ok} |")
        result[key] = {
            "median_s": t,
            "samples": times[key],
            "ratio": ratio,
            "pair_ratios": ratios.get(key, []),
        }
    print()
    for key, vals in extra.items():
        print(
            f"- {key}: median {statistics.median(vals):.2f} s ({', '.join(f'{v:.2f}' for v in vals)})"
        )
    for note in notes:
        print(f"- {note}")
    if args.json:
        h.write_json(
            args.json,
            {"mib": mib, "rounds": rounds},
            machine,
            total,
            {"times": result, "extra": extra},
            notes,
        )
    return 124 if aborted else 0


if __name__ == "__main__":
    raise SystemExit(main())
