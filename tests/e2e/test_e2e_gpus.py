"""GPU scheduling: discovery, exclusive assignment, preference lists, clear errors.

Two layers of proof:

* Everywhere (CI included): the control plane is given fake GPUs with the
  documented test hook ``KETCH_FAKE_GPUS`` (no GPU can run here), and the tests
  check what ketch decides: exclusive assignment, waiting when busy, fallback
  lists and the error for a type no node offers.
* ``@pytest.mark.gpu`` (skipped without an NVIDIA GPU): the same on real
  hardware, with device nodes bound into sandbox containers and a torch matmul.
"""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

# Imported at collection: later test folders bring a conftest module of the same name.
from ketch_testing import SHOW, ExampleRun, KetchEnv

pytestmark = pytest.mark.e2e

APP = SHOW + textwrap.dedent(
    """
    import json, os, time
    import ketch

    app = ketch.App("gpus")

    def _hold(seconds):
        start = time.time()
        time.sleep(seconds)
        return {"start": start, "end": time.time(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "container": os.environ.get("KETCH_CONTAINER_ID")}

    @app.function(gpu="H100", timeout=60)
    def hold_a(seconds: float) -> dict:
        return _hold(seconds)

    @app.function(gpu="any", timeout=60)
    def hold_b(seconds: float) -> dict:
        return _hold(seconds)

    @app.function(gpu=["B200", "H100"])
    def fallback() -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    @app.function(gpu="A100-80GB:2")
    def impossible() -> str:
        return "ran"

    def node_list():
        import subprocess, sys
        ketch_cli = os.path.join(os.path.dirname(sys.executable), "ketch")
        out = subprocess.run([ketch_cli, "node", "list", "--json"], capture_output=True,
                             text=True, timeout=60)
        return json.loads(out.stdout)

    def sandbox_gpus():
        sb = ketch.Sandbox.create(app=app, gpu="H100")
        seen = sb.exec("sh", "-c", "echo $CUDA_VISIBLE_DEVICES").stdout.read().strip()
        nodes = node_list()
        holder = nodes[0]["gpus"][0]["container"] == sb.object_id and nodes[0]["sandboxes"] == 1
        try:
            ketch.Sandbox.create(app=app, gpu="H100")
            second = "created"
        except Exception as exc:
            second = type(exc).__name__
        sb.terminate()
        sb.wait(raise_on_termination=False)
        return [seen, second, holder]

    @app.local_entrypoint()
    def main():
        show("sandbox", sandbox_gpus)  # first: no function container holds the GPU yet
        show("impossible", lambda: impossible.remote())
        calls = [hold_a.spawn(1.5), hold_b.spawn(1.5)]
        show("exclusive", lambda: [c.get() for c in calls])
        # The idle containers holding the GPU keep it for their 60 s scaledown window
        # unless ketch stops them for `fallback`: only then does this get() not time out.
        show("fallback", lambda: fallback.spawn().get(timeout=20))
    """
)


@pytest.fixture(scope="module")
def fake_gpu_run():
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-gpu-", dir="/tmp"))
    env = KetchEnv(home, runtime="local")
    env.env["KETCH_FAKE_GPUS"] = "H100:1"
    app = home / "gpu_app.py"
    app.write_text(APP)
    try:
        run = ExampleRun.parse(env.cli("run", str(app), timeout=120))
        status = env.cli("server", "status", timeout=30)
        logs = env.cli("app", "logs", "gpus", timeout=30)
        nodes = env.cli("node", "list", timeout=30)
        yield run, status, logs, nodes
    finally:
        env.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(180)
def test_node_list_shows_this_machine(fake_gpu_run):
    _, _, _, nodes = fake_gpu_run
    assert nodes.returncode == 0, nodes.describe()
    lines = nodes.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "HOST", "CPUS"]
    assert lines[1].startswith("local ") and "H100 x1 (0)" in lines[1] and lines[1].endswith("ok")
    assert "gpu 0:" in lines[2] and lines[2].endswith("free")


def test_status_lists_the_gpus(fake_gpu_run):
    _, status, _, _ = fake_gpu_run
    assert "1x H100" in status.stdout, status.describe()


@pytest.mark.timeout(180)
def test_a_sandbox_owns_its_gpu_as_a_container_does(fake_gpu_run):
    run, _, _, _ = fake_gpu_run
    # `ketch node list` shows which container holds the GPU.
    assert run.value("sandbox") == ["0", "ResourceUnavailableError", True]


def test_a_type_no_node_offers_fails_at_once(fake_gpu_run):
    run, _, _, _ = fake_gpu_run
    error = run.error("impossible")
    assert error.startswith("ResourceUnavailableError") and "A100-80GB:2" in error, error
    assert "H100" in error, error  # says what the node has (queued, it would not fail at all)


@pytest.mark.timeout(180)
def test_one_gpu_is_owned_by_one_container_at_a_time(fake_gpu_run):
    run, _, logs, _ = fake_gpu_run
    first, second = sorted(run.value("exclusive"), key=lambda r: r["start"])
    assert first["cuda"] == second["cuda"] == "0", (first, second)
    assert first["container"] != second["container"], (first, second)
    assert second["start"] >= first["end"] - 0.05, (
        f"two containers held the GPU at once: {first} {second}"
    )
    assert "waiting for a GPU" in logs.output, logs.describe()


@pytest.mark.timeout(180)
def test_preference_list_falls_back_to_what_exists(fake_gpu_run):
    run, _, _, _ = fake_gpu_run
    # The idle containers holding the GPU are stopped for it, not waited out (see main()).
    assert run.value("fallback") == "0", run.proc.describe()


# --- real hardware -------------------------------------------------------------------------

TORCH_APP = textwrap.dedent(
    """
    import json, os, subprocess
    import ketch

    app = ketch.App("gpu-torch")

    @app.function(gpu="any")
    def matmul() -> dict:
        import torch
        a = torch.randn(1024, 1024, device="cuda")
        b = (a @ a).sum().item()
        return {"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(), "ok": b == b}

    @app.function(gpu="any")
    def devices() -> dict:
        nodes = sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        return {"nodes": nodes, "smi": smi.stdout, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

    @app.local_entrypoint()
    def main():
        for name, fn in (("devices", devices), ("matmul", matmul)):
            try:
                print("RESULT " + json.dumps({"step": name, "value": fn.remote()}), flush=True)
            except Exception as exc:
                print("RESULT " + json.dumps({"step": name, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    """
)


def _real_gpus() -> bool:
    from ketch.worker import gpus

    return gpus.discover().source.startswith("nvml")


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.parametrize("runtime", ["local", "sandbox"])
def test_real_gpu_devices_and_torch(runtime):
    if not _real_gpus():
        pytest.skip("no NVIDIA GPU (NVML finds none)")
    if runtime == "sandbox":
        from ketch.worker import isolate

        if not isolate.support().ok:
            pytest.skip("the sandbox runtime cannot run here")
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-realgpu-", dir="/tmp"))
    env = KetchEnv(home, runtime=runtime)
    app = home / "torch_app.py"
    app.write_text(TORCH_APP)
    try:
        run = ExampleRun.parse(env.cli("run", str(app), timeout=560))
        seen = run.value("devices")
        assert "nvidiactl" in seen["nodes"] and "GPU 0" in seen["smi"], seen
        if runtime == "local":
            result = run.value("matmul")  # the host Python has torch on the GPU machine
            assert result["ok"] and result["count"] >= 1, result
    finally:
        env.close()
        shutil.rmtree(home, ignore_errors=True)
