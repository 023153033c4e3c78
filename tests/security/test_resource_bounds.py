"""Bounds a container cannot get past: its disk (``ephemeral_disk``), its /tmp, and the node's memory.

One control plane of its own (sandbox runtime) with a small cap on all
containers' memory together and its own cgroup parent, so that the cap does
not touch other tests' containers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest
from ketch_testing import KetchEnv

from ketch.worker import cgroups, isolate, scratch

pytestmark = pytest.mark.timeout(240)

APP = """
import json
import os

import ketch

app = ketch.App("sec-bounds")


def fill(path, chunk_mib=8, stop_mib=400):
    block = b"x" * (chunk_mib << 20)
    written = 0
    try:
        with open(path, "wb") as fh:
            while written < stop_mib:
                fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
                written += chunk_mib
    except OSError as exc:
        return {"errno": exc.errno, "written_mib": written}
    return {"errno": None, "written_mib": written}


@app.function(ephemeral_disk=96)
def fill_root() -> dict:
    return fill("/root/big.bin")


@app.function(ephemeral_disk=64)
def fill_tmp() -> dict:
    return fill("/tmp/big.bin")


@app.function(ephemeral_disk=64)
def fill_and_raise() -> None:
    with open("/root/big.bin", "wb") as fh:
        while True:
            fh.write(b"x" * (8 << 20))
            fh.flush()
            os.fsync(fh.fileno())


@app.function()
def hog() -> int:
    chunks = []
    for _ in range(200):  # up to 1.6 GiB, far over the node's 300 MiB cap
        chunks.append(bytearray(8 << 20))
    return len(chunks)


@app.function()
def fine() -> str:
    return "still fine"


@app.local_entrypoint()
def main():
    out = {"root": fill_root.remote(), "tmp": fill_tmp.remote()}
    try:
        fill_and_raise.remote()
    except OSError as exc:
        out["raised"] = f"{type(exc).__name__}: {exc} | " + " ".join(getattr(exc, "__notes__", []))
    try:
        out["hog"] = hog.remote()
    except Exception as exc:
        out["hog"] = f"{type(exc).__name__}: {exc}"
    out["fine"] = fine.remote()
    print("RESULT " + json.dumps(out))
"""


@pytest.fixture
def bounded_env():
    if not isolate.support().ok:
        pytest.skip(f"the sandbox runtime cannot run here: {isolate.support().reason}")
    if cgroups.detect().root_of("memory") is None:
        pytest.skip("no memory cgroup controller here")
    home = Path(tempfile.mkdtemp(prefix="ketch-bounds-", dir="/tmp"))
    env = KetchEnv(home)
    env.env.update(
        KETCH_RUNTIME="sandbox",
        KETCH_CGROUP_PARENT="ketch-bounds-test",
        KETCH_CONTAINERS_MEMORY_MB="300",
    )
    yield env
    env.close()
    shutil.rmtree(home, ignore_errors=True)
    cgroups.cleanup_stale("ketch-bounds-test", remove_parent=True)


def test_disk_tmp_and_memory_are_bounded(bounded_env, workdir: Path):
    app = workdir / "bounds.py"
    app.write_text(textwrap.dedent(APP))
    run = bounded_env.cli("run", app, timeout=200)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.describe()
    out = json.loads(lines[-1][len("RESULT ") :])
    if scratch.support() is None:
        assert out["root"]["errno"] == 28 and out["root"]["written_mib"] <= 96, (
            out
        )  # ENOSPC at its bound
    assert out["tmp"]["errno"] == 28 and out["tmp"]["written_mib"] <= 64, out
    if scratch.support() is None:  # the call fails with the error, and the note names the bound
        assert "No space left" in out["raised"] and "ephemeral_disk=64 MiB" in out["raised"], out
    assert out["hog"].startswith("OutOfMemoryError"), out
    assert "300 MiB" in out["hog"], out
    assert out["fine"] == "still fine", out
