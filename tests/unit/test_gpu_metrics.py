"""GPU utilization and memory per container in /metrics: NVML's readings (NVML itself is
faked here: the CI machine has no GPU; the device machine runs the real one)."""

from __future__ import annotations

import sys
import types

from ketch.worker import gpus


class _FakeNvml(types.ModuleType):
    NVMLError = Exception

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.inits = 0

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        if index == 3:
            raise self.NVMLError("gone")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int):  # noqa: N802
        return types.SimpleNamespace(gpu=40 + handle, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int):  # noqa: N802
        return types.SimpleNamespace(used=(handle + 1) << 30, total=80 << 30)


def test_sample_reads_each_gpu_and_skips_what_nvml_cannot_say(monkeypatch):
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    got = gpus.sample([0, 1, 3])
    assert got == {0: (0.40, 1 << 30), 1: (0.41, 2 << 30)}
    assert gpus.sample([]) == {} and fake.inits == 1  # nothing asked: NVML untouched


def test_sample_without_nvml_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert gpus.sample([0]) == {}
