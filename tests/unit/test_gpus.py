"""GPU discovery, matching and allocation (``ketch.worker.gpus``), without needing a GPU.

Only the last test needs real hardware; it is marked ``gpu`` and skips itself otherwise.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from ketch._spec import KNOWN_GPUS, parse_gpu
from ketch.worker import gpus as gpus_mod
from ketch.worker.gpus import (
    FAKE_ENV,
    KINDS,
    Gpu,
    GpuAllocator,
    Inventory,
    device_paths,
    discover,
    driver_files,
    kind_of,
    satisfies,
    visible_devices_env,
)


def fake_inventory(monkeypatch: pytest.MonkeyPatch, spec: str) -> Inventory:
    monkeypatch.setenv(FAKE_ENV, spec)
    return discover()


def real_gpu(index: int, kind: str = "H100", minor: int | None = None) -> Gpu:
    return Gpu(
        index, f"GPU-{index:08x}", f"NVIDIA {kind}", kind, 81559, index if minor is None else minor
    )


# ---------------------------------------------------------------------------
# naming


@pytest.mark.parametrize(
    ("name", "memory_mib", "kind"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "H100"),
        ("NVIDIA H100 PCIe", 81559, "H100"),
        ("NVIDIA H100 NVL", 95830, "H100"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100 80GB PCIe", 81920, "A100-80GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100", 81920, "A100-80GB"),  # no size in the name: memory decides
        ("NVIDIA A100", 40960, "A100-40GB"),
        ("NVIDIA A10G", 23028, "A10G"),
        ("NVIDIA A10", 23028, "A10"),
        ("NVIDIA L4", 23034, "L4"),
        ("Tesla T4", 15360, "T4"),
        ("NVIDIA L40S", 46068, "L40S"),
        ("NVIDIA L40", 46068, "OTHER"),
        ("NVIDIA H200", 143771, "H200"),
        ("NVIDIA H200 NVL", 143771, "H200"),
        ("NVIDIA GH200 480GB", 97871, "OTHER"),
        ("NVIDIA B200", 183359, "B200"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 97887, "RTX-PRO-6000"),
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887, "RTX-PRO-6000"),
        ("NVIDIA RTX 6000 Ada Generation", 49140, "OTHER"),
        ("NVIDIA GeForce RTX 4090", 24564, "OTHER"),
        ("Tesla V100-SXM2-16GB", 16384, "OTHER"),
    ],
)
def test_kind_of_realistic_nvml_names(name, memory_mib, kind):
    assert kind_of(name, memory_mib) == kind


def test_every_kind_is_a_known_gpu_name():
    assert set(KINDS) - {"OTHER"} <= set(KNOWN_GPUS)


@pytest.mark.parametrize(
    ("request_type", "kind", "ok"),
    [
        ("ANY", "OTHER", True),
        ("any", "T4", True),
        ("H100", "H100", True),
        ("H100", "H200", True),  # Modal documents H100 -> H200 upgrades
        ("H100!", "H200", False),
        ("H100!", "H100", True),
        ("H200", "H100", False),
        ("A100", "A100-40GB", True),
        ("A100", "A100-80GB", True),
        ("A100-40GB", "A100-80GB", False),
        ("A100-80GB", "A100-40GB", False),
        ("A10", "A10G", True),
        ("A10G", "A10", True),
        ("L4", "L40S", False),
        ("T4", "OTHER", False),
        ("B200", "H200", False),
        ("NOT-A-GPU", "H100", False),
    ],
)
def test_satisfies(request_type, kind, ok):
    assert satisfies(request_type, real_gpu(0, kind)) is ok


# ---------------------------------------------------------------------------
# discovery


def test_fake_gpus_replace_discovery(monkeypatch):
    inventory = fake_inventory(monkeypatch, "H100:2, a10g")
    assert inventory.source == "fake (KETCH_FAKE_GPUS)"
    assert [(g.index, g.kind, g.fake, g.minor) for g in inventory.gpus] == [
        (0, "H100", True, None),
        (1, "H100", True, None),
        (2, "A10G", True, None),
    ]
    assert len({g.uuid for g in inventory.gpus}) == 3
    assert inventory.describe() == "2x H100 (80 GiB, fake), 1x A10G (22 GiB, fake)"


def test_fake_gpus_none_and_typos_give_no_gpus_with_a_reason(monkeypatch):
    none = fake_inventory(monkeypatch, "none")
    assert none.gpus == () and none.source.startswith("none:")
    bad = fake_inventory(monkeypatch, "H100:2,X100")
    assert bad.gpus == ()
    assert "X100" in bad.source and "KETCH_FAKE_GPUS" in bad.describe()


def test_discover_on_this_machine_does_not_raise(monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    inventory = discover()
    if inventory.source.startswith("nvml"):
        assert inventory.gpus and not any(g.fake for g in inventory.gpus)
    else:
        assert inventory.gpus == ()
        assert inventory.source.startswith("none: ") and len(inventory.source) > len("none: ")
        assert inventory.describe().startswith("no GPUs (")


def test_discover_without_pynvml(monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes ``import pynvml`` fail
    inventory = discover()
    assert inventory.gpus == () and "pynvml" in inventory.source


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_pynvml(devices, init_error: int | None = None) -> types.SimpleNamespace:
    """A stand-in for ``pynvml``: ``devices`` are (name, bytes total, uuid, minor or error)."""
    calls: list[str] = []

    def init():
        calls.append("init")
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def minor(handle):
        value = devices[handle][3]
        if isinstance(value, Exception):
            raise value
        return value

    def name(handle):
        if isinstance(devices[handle][0], Exception):
            raise devices[handle][0]
        return devices[handle][0]

    return types.SimpleNamespace(
        calls=calls,
        NVMLError=FakeNVMLError,
        NVML_ERROR_LIBRARY_NOT_FOUND=12,
        NVML_ERROR_DRIVER_NOT_LOADED=9,
        NVML_ERROR_NO_PERMISSION=4,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=name,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=devices[h][1]),
        nvmlDeviceGetUUID=lambda h: devices[h][2],
        nvmlDeviceGetMinorNumber=minor,
    )


def test_nvml_path_handles_bytes_and_str_names(monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    nvml = fake_pynvml(
        [
            (b"NVIDIA H100 80GB HBM3", 81559 * 2**20, b"GPU-aaaa", 4),
            ("NVIDIA A100-SXM4-40GB", 40960 * 2**20, "GPU-bbbb", FakeNVMLError(3)),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    inventory = discover()
    assert inventory.source == "nvml"
    assert inventory.gpus == (
        Gpu(0, "GPU-aaaa", "NVIDIA H100 80GB HBM3", "H100", 81559, 4),
        Gpu(1, "GPU-bbbb", "NVIDIA A100-SXM4-40GB", "A100-40GB", 40960, None),
    )
    assert nvml.calls == ["init", "shutdown"]
    assert inventory.describe() == "1x H100 (80 GiB), 1x A100-40GB (40 GiB)"


def test_nvml_errors_mean_no_gpus_with_the_reason(monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error=9))
    inventory = discover()
    assert inventory.gpus == ()
    assert inventory.describe() == "no GPUs (NVML: NVIDIA driver not loaded)"

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error=12))
    assert "libnvidia-ml.so.1 not found" in discover().source

    nvml = fake_pynvml([])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert discover().source == "none: NVML found no GPUs"
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_skips_a_broken_gpu_and_says_so(monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    nvml = fake_pynvml(
        [(FakeNVMLError(15), 0, "GPU-lost", 0), ("NVIDIA L4", 23034 * 2**20, "GPU-ok", 1)]
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    inventory = discover()
    assert [g.uuid for g in inventory.gpus] == ["GPU-ok"]
    assert inventory.source.startswith("nvml (skipped GPU 0:")


# ---------------------------------------------------------------------------
# allocation


def test_allocate_prefers_options_in_order_and_falls_back(monkeypatch):
    alloc = GpuAllocator(fake_inventory(monkeypatch, "A10G,H100"))
    options = parse_gpu(["H100", "A10G"])
    first = alloc.allocate("a", options)
    assert first is not None
    assert first[0] == {"type": "H100", "count": 1} and [g.index for g in first[1]] == [1]
    second = alloc.allocate("b", options)
    assert second is not None
    assert second[0] == {"type": "A10G", "count": 1} and [g.index for g in second[1]] == [0]
    assert alloc.allocate("c", options) is None
    assert alloc.busy() == {"a": [1], "b": [0]} and alloc.free_count() == 0


def test_allocation_is_exclusive_until_released(monkeypatch):
    alloc = GpuAllocator(fake_inventory(monkeypatch, "L4"))
    assert alloc.allocate("a", parse_gpu("L4")) is not None
    assert alloc.allocate("b", parse_gpu("L4")) is None
    alloc.release("a")
    got = alloc.allocate("b", parse_gpu("L4"))
    assert got is not None and got[1][0].index == 0
    assert alloc.busy() == {"b": [0]}


def test_counts_take_several_gpus_of_one_kind(monkeypatch):
    alloc = GpuAllocator(fake_inventory(monkeypatch, "H100:3,H200"))
    got = alloc.allocate("a", parse_gpu("H100:2"))
    assert got is not None and [g.index for g in got[1]] == [0, 1]
    assert alloc.free_count() == 2
    # One H100 and one H200 are free: never a mixed pair, but H200s alone may serve H100:1.
    assert alloc.allocate("b", parse_gpu("H100:2")) is None
    assert alloc.check(parse_gpu("H100:2")) is None  # possible once GPUs free up
    got = alloc.allocate("c", parse_gpu("H100"))
    assert got is not None and got[1][0].kind == "H100"  # exact before upgrade
    got = alloc.allocate("d", parse_gpu("H100"))
    assert got is not None and got[1][0].kind == "H200"
    assert alloc.free_count() == 0


def test_h100_bang_and_a100_sizes(monkeypatch):
    alloc = GpuAllocator(fake_inventory(monkeypatch, "H200,A100-80GB"))
    assert alloc.allocate("a", parse_gpu("H100!")) is None
    assert alloc.check(parse_gpu("H100!")) is not None
    assert alloc.check(parse_gpu("A100-40GB")) is not None
    got = alloc.allocate("b", parse_gpu("A100"))
    assert got is not None and got[1][0].kind == "A100-80GB"


def test_any_takes_any_gpu(monkeypatch):
    alloc = GpuAllocator(fake_inventory(monkeypatch, "T4,OTHER:2"))
    got = alloc.allocate("a", parse_gpu("any"))
    assert got is not None and got[0] == {"type": "ANY", "count": 1} and got[1][0].kind == "T4"
    got = alloc.allocate("b", parse_gpu("ANY:2"))
    assert got is not None and [g.kind for g in got[1]] == ["OTHER", "OTHER"]
    assert alloc.allocate("c", parse_gpu("ANY")) is None


def test_check_explains_impossible_requests(monkeypatch):
    inventory = Inventory((real_gpu(0, "H100"),), "nvml")
    alloc = GpuAllocator(inventory)
    assert alloc.check(parse_gpu("H100")) is None
    assert alloc.check(parse_gpu(["A100-80GB:2", "H100"])) is None
    assert alloc.check([]) is None
    assert alloc.check(parse_gpu("A100-80GB:2")) == (
        "no node offers gpu='A100-80GB:2' (this node has 1x H100 (80 GiB))"
    )
    assert alloc.check(parse_gpu(["H100:2", "T4"])) == (
        "no node offers gpu=['H100:2', 'T4'] (this node has 1x H100 (80 GiB))"
    )
    # Busy GPUs do not make a request impossible.
    assert alloc.allocate("a", parse_gpu("H100")) is not None
    assert alloc.check(parse_gpu("H100")) is None

    empty = GpuAllocator(Inventory((), "none: NVML: NVIDIA driver not loaded"))
    assert empty.check(parse_gpu("T4")) == (
        "no node offers gpu='T4' (this node has no GPUs (NVML: NVIDIA driver not loaded))"
    )
    assert empty.allocate("a", parse_gpu("T4")) is None


def test_release_is_idempotent_and_misuse_is_an_error(monkeypatch):
    alloc = GpuAllocator(fake_inventory(monkeypatch, "L4:2"))
    alloc.release("nobody")
    assert alloc.allocate("a", parse_gpu("L4")) is not None
    with pytest.raises(ValueError, match="already holds"):
        alloc.allocate("a", parse_gpu("L4"))
    with pytest.raises(ValueError, match="at least one"):
        alloc.allocate("b", [])
    alloc.release("a")
    alloc.release("a")
    assert alloc.busy() == {} and alloc.free_count() == 2


# ---------------------------------------------------------------------------
# what a container needs


def test_device_paths_for_fake_gpus_is_empty(monkeypatch):
    assert device_paths(fake_inventory(monkeypatch, "H100:2").gpus) == []
    assert device_paths([]) == []


def test_device_paths_lists_existing_nodes(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    (tmp_path / "nvidia-caps").mkdir()
    paths = device_paths([real_gpu(0, minor=1)], dev=str(tmp_path))
    assert paths == [
        str(tmp_path / n) for n in ("nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps")
    ]


def test_ldconfig_parsing_keeps_driver_libraries_of_this_abi(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libcuda.so.580.65.06").touch()
    (lib / "libcuda.so.1").symlink_to("libcuda.so.580.65.06")
    (lib / "libnvidia-ml.so.580.65.06").touch()
    (lib / "libnvidia-ml.so.1").symlink_to("libnvidia-ml.so.580.65.06")
    text = "\n".join(
        [
            "4 libs found in cache `/etc/ld.so.cache'",
            f"\tlibcuda.so.1 (libc6,x86-64) => {lib}/libcuda.so.1",
            "\tlibcuda.so.1 (libc6) => /usr/lib32/libcuda.so.1",
            f"\tlibcudart.so.12 (libc6,x86-64) => {lib}/libcudart.so.12",
            f"\tlibcudadebugger.so.1 (libc6,x86-64) => {lib}/libcudadebugger.so.1",
            f"\tlibnvidia-ml.so.1 (libc6,x86-64) => {lib}/libnvidia-ml.so.1",
            "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/elsewhere/libnvidia-ml.so.1",
            f"\tlibnvidia-cfg.so.1 (libc6,x86-64) => {lib}/missing/libnvidia-cfg.so.1",
        ]
    )
    entries = gpus_mod._ldconfig_entries(text, machine="x86_64")
    assert entries == [
        f"{lib}/libcuda.so.1",
        f"{lib}/libnvidia-ml.so.1",
        "/usr/lib/elsewhere/libnvidia-ml.so.1",
        f"{lib}/missing/libnvidia-cfg.so.1",
    ]
    assert gpus_mod._ldconfig_entries(text, machine="aarch64") == []
    assert gpus_mod._resolve_libraries(entries) == [
        f"{lib}/libcuda.so.1",
        f"{lib}/libcuda.so.580.65.06",
        f"{lib}/libnvidia-ml.so.1",
        f"{lib}/libnvidia-ml.so.580.65.06",
    ]


def test_driver_files_returns_absolute_paths():
    files = driver_files()
    assert isinstance(files, list) and all(os.path.isabs(f) for f in files)
    assert len({os.path.basename(f) for f in files}) == len(files)


def test_visible_devices_env():
    real = [real_gpu(0), real_gpu(3)]
    assert visible_devices_env(real) == {
        "CUDA_VISIBLE_DEVICES": "GPU-00000000,GPU-00000003",
        "NVIDIA_VISIBLE_DEVICES": "GPU-00000000,GPU-00000003",
    }
    fake = [Gpu(2, "GPU-fake-0002", "Fake T4", "T4", 15360, None, fake=True)]
    assert visible_devices_env(fake)["CUDA_VISIBLE_DEVICES"] == "2"
    assert visible_devices_env([]) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": ""}


# ---------------------------------------------------------------------------
# real hardware


@pytest.mark.gpu
def test_real_gpu_is_discovered(monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    inventory = discover()
    if not inventory.source.startswith("nvml"):
        pytest.skip(f"no GPU found by NVML: {inventory.describe()}")
    gpu = inventory.gpus[0]
    assert gpu.kind in KINDS and gpu.kind != "OTHER", gpu.name
    assert gpu.uuid.startswith("GPU-") and gpu.memory_mib > 1024 and not gpu.fake
    paths = device_paths(inventory.gpus)
    assert "/dev/nvidiactl" in paths
    if gpu.minor is not None:
        assert f"/dev/nvidia{gpu.minor}" in paths
    assert any(os.path.basename(f).startswith("libcuda.so") for f in driver_files())
    alloc = GpuAllocator(inventory)
    assert alloc.check(parse_gpu(gpu.kind)) is None
    assert alloc.allocate("probe", parse_gpu("any")) is not None
