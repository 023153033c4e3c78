"""The GPUs of one node: discovery, matching, exclusive allocation and what a container needs.

Discovery asks NVML (the library behind ``nvidia-smi``) through ``pynvml``. Anything that
goes wrong there (no ``pynvml``, no driver, no permission) means "no GPUs", and the reason
is kept for ``ketch server status``::

    >>> inv = discover()
    >>> inv.describe()                      # doctest: +SKIP
    '1x H100 (80 GiB)'                      # or 'no GPUs (NVML: NVIDIA driver not loaded)'

Test hook: ``KETCH_FAKE_GPUS`` replaces discovery with fake GPUs, so scheduling can be tested
without hardware. It is a comma-separated list of ``KIND[:COUNT]`` with kinds from
``ketch._spec.KNOWN_GPUS`` (``"A100"`` means ``A100-40GB``), or ``none`` for no GPUs::

    KETCH_FAKE_GPUS="H100:2,A10G"   # GPUs 0 and 1 are H100s, GPU 2 is an A10G

Fake GPUs are allocated like real ones, but containers get no device nodes for them
(``device_paths`` returns ``[]``) and ``CUDA_VISIBLE_DEVICES`` holds their indices.

Matching follows Modal's documented rules (https://modal.com/docs/guide/gpu): a ``"H100"``
request may run on an H200 (``"H100!"`` may not), ``"A100"`` may run on either A100 size,
and ``"A10"``/``"A10G"`` name the same class of GPU. The GPUs of one allocation are always
of a single kind, and an exact match is preferred over an upgrade.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FAKE_ENV = "KETCH_FAKE_GPUS"
FAKE_SOURCE = f"fake ({FAKE_ENV})"

# Concrete kinds a GPU can be normalized to (``KNOWN_GPUS`` minus the request-only aliases).
KINDS = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "A100-40GB",
    "A100-80GB",
    "L40S",
    "H100",
    "H200",
    "B200",
    "RTX-PRO-6000",
    "OTHER",
)

# Kinds that satisfy a request type, best first; "ANY" is handled apart.
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "T4": ("T4",),
    "L4": ("L4",),
    "A10": ("A10", "A10G"),
    "A10G": ("A10G", "A10"),
    "A100": ("A100-40GB", "A100-80GB"),
    "A100-40GB": ("A100-40GB",),
    "A100-80GB": ("A100-80GB",),
    "L40S": ("L40S",),
    "H100": ("H100", "H200"),
    "H100!": ("H100",),
    "H200": ("H200",),
    "B200": ("B200",),
    "RTX-PRO-6000": ("RTX-PRO-6000",),
}

# Typical NVML memory totals (MiB), used for fake GPUs.
_FAKE_MEMORY_MIB = {
    "T4": 15360,
    "L4": 23034,
    "A10": 23028,
    "A10G": 23028,
    "A100-40GB": 40960,
    "A100-80GB": 81920,
    "L40S": 46068,
    "H100": 81559,
    "H200": 143771,
    "B200": 183359,
    "RTX-PRO-6000": 97887,
    "OTHER": 16384,
}

# Device nodes shared by all GPUs of a node; bound when present.
_CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps")

# User-space driver libraries a CUDA program needs inside a container.
_DRIVER_LIBRARIES = (
    "libcuda",
    "libnvidia-ml",
    "libnvidia-ptxjitcompiler",
    "libnvidia-nvvm",
    "libnvidia-gpucomp",
    "libnvidia-allocator",
    "libnvidia-cfg",
    "libnvidia-opencl",
)
_DRIVER_LIBRARY_RE = re.compile(
    r"^(?:" + "|".join(map(re.escape, _DRIVER_LIBRARIES)) + r")\.so(?:\.[0-9.]+)?$"
)
_DRIVER_BINARIES = ("nvidia-smi", "nvidia-debugdump")
_LDCONFIG_LINE_RE = re.compile(r"^\s*(?P<name>\S+)\s+\((?P<flags>[^)]*)\)\s+=>\s+(?P<path>\S+)\s*$")
_LDCONFIG_ARCH = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "AArch64", "arm64": "AArch64"}


@dataclass(frozen=True)
class Gpu:
    """One GPU of this node.

    >>> Gpu(0, "GPU-8f3c...", "NVIDIA H100 80GB HBM3", "H100", 81559, 0).memory_gib
    80
    """

    index: int
    uuid: str
    name: str  # as NVML reports it, e.g. "NVIDIA H100 80GB HBM3"
    kind: str  # one of KINDS, e.g. "H100" or "A100-80GB"
    memory_mib: int
    minor: int | None  # N of /dev/nvidiaN; None when unknown or fake
    fake: bool = False

    @property
    def memory_gib(self) -> int:
        return round(self.memory_mib / 1024)


@dataclass(frozen=True)
class Inventory:
    """The GPUs found on this node and where they came from.

    ``source`` is ``"nvml"`` (possibly with a note), ``"fake (KETCH_FAKE_GPUS)"`` or
    ``"none: <reason>"``.

    >>> Inventory((), "none: NVML: NVIDIA driver not loaded").describe()
    'no GPUs (NVML: NVIDIA driver not loaded)'
    """

    gpus: tuple[Gpu, ...]
    source: str

    def describe(self) -> str:
        """A one-line summary such as ``"2x H100 (80 GiB), 1x A10G (22 GiB)"``."""
        if not self.gpus:
            reason = self.source.removeprefix("none:").strip()
            return f"no GPUs ({reason})" if reason else "no GPUs"
        groups: dict[tuple[str, int], int] = {}
        for gpu in self.gpus:
            key = (gpu.kind, gpu.memory_gib)
            groups[key] = groups.get(key, 0) + 1
        fake = ", fake" if all(gpu.fake for gpu in self.gpus) else ""
        return ", ".join(f"{n}x {kind} ({gib} GiB{fake})" for (kind, gib), n in groups.items())


def _none(reason: str) -> Inventory:
    return Inventory((), f"none: {reason}")


# ---------------------------------------------------------------------------
# naming


def kind_of(nvml_name: str, memory_mib: int) -> str:
    """Normalize an NVML device name to one of ``KINDS``; ``"OTHER"`` when unknown.

    ``memory_mib`` tells the A100 sizes apart when the name does not.

    >>> kind_of("NVIDIA A100-SXM4-80GB", 81920), kind_of("Tesla T4", 15360)
    ('A100-80GB', 'T4')
    """
    name = nvml_name.upper().replace("_", " ")
    words = set(re.split(r"[\s\-/]+", name))
    if "GH200" in words or "GB200" in words:
        return "OTHER"  # Grace superchips are not the discrete GPUs the names promise
    if "RTX" in words and "PRO" in words and "6000" in words:
        return "RTX-PRO-6000"
    for kind in ("H200", "H100", "B200", "L40S", "A10G", "A10", "L4", "T4"):
        if kind in words:
            return kind
    if "A100" in words:
        if "80GB" in name:
            return "A100-80GB"
        if "40GB" in name:
            return "A100-40GB"
        return "A100-80GB" if memory_mib > 60 * 1024 else "A100-40GB"
    return "OTHER"


def _request_type(option: Mapping[str, Any]) -> str:
    return str(option.get("type", "")).strip().upper()


def _request_count(option: Mapping[str, Any]) -> int:
    count = option.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"GPU count must be a positive int, got {count!r} in {dict(option)!r}")
    return count


def _format_option(option: Mapping[str, Any]) -> str:
    count = option.get("count", 1)
    return _request_type(option) + (f":{count}" if count != 1 else "")


def satisfies(request_type: str, gpu: Gpu) -> bool:
    """Whether ``gpu`` may serve a request for ``request_type`` (a ``parse_gpu`` type).

    ``"ANY"`` takes any GPU; ``"H100"`` also takes an H200 (Modal's documented free upgrade),
    ``"H100!"`` only an H100; ``"A100"`` takes either size, ``"A100-40GB"``/``"A100-80GB"``
    only theirs; ``"A10"`` and ``"A10G"`` take each other. Other types match exactly.

    >>> h200 = Gpu(0, "GPU-1", "NVIDIA H200", "H200", 143771, 0)
    >>> satisfies("H100", h200), satisfies("H100!", h200), satisfies("any", h200)
    (True, False, True)
    """
    wanted = request_type.strip().upper()
    return wanted == "ANY" or gpu.kind in _CANDIDATES.get(wanted, ())


# ---------------------------------------------------------------------------
# discovery


def discover() -> Inventory:
    """Find this node's GPUs: ``KETCH_FAKE_GPUS`` if set, else NVML. Never raises.

    >>> discover().source                   # doctest: +SKIP
    'nvml'
    """
    fake = os.environ.get(FAKE_ENV, "").strip()
    if fake:
        try:
            return _fake_inventory(fake)
        except ValueError as exc:
            return _none(str(exc))
    try:
        return _nvml_inventory()
    except Exception as exc:  # a broken binding must not take the worker down
        return _none(f"NVML: unexpected {type(exc).__name__}: {exc}")


def _fake_inventory(spec: str) -> Inventory:
    if spec.lower() in ("none", "0"):
        return _none(f"{FAKE_ENV}={spec}")
    gpus: list[Gpu] = []
    for item in spec.split(","):
        kind, _, count_text = item.strip().upper().partition(":")
        kind = {"A100": "A100-40GB", "H100!": "H100"}.get(kind, kind)
        if kind not in KINDS or not (count_text or "1").isdigit():
            known = ", ".join(KINDS)
            raise ValueError(
                f"bad {FAKE_ENV} entry {item.strip()!r}: use KIND[:COUNT] with KIND one of {known}"
            )
        for _ in range(int(count_text or 1)):
            index = len(gpus)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=f"GPU-fake-{index:04d}",
                    name=f"Fake {kind}",
                    kind=kind,
                    memory_mib=_FAKE_MEMORY_MIB[kind],
                    minor=None,
                    fake=True,
                )
            )
    return Inventory(tuple(gpus), FAKE_SOURCE)


def _text(value: str | bytes) -> str:
    """pynvml returns ``bytes`` in old versions and ``str`` in new ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvml_reason(pynvml: Any, exc: Exception) -> str:
    value = getattr(exc, "value", None)
    reasons = {
        getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", -1): (
            "libnvidia-ml.so.1 not found (is the NVIDIA driver installed?)"
        ),
        getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", -1): "NVIDIA driver not loaded",
        getattr(pynvml, "NVML_ERROR_NO_PERMISSION", -1): "no permission to access the GPUs",
    }
    return f"NVML: {reasons.get(value, str(exc) or type(exc).__name__)}"


def _nvml_inventory() -> Inventory:
    try:
        import pynvml
    except ImportError:
        return _none("pynvml is not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return _none(_nvml_reason(pynvml, exc))
    gpus: list[Gpu] = []
    skipped: list[str] = []
    try:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            return _none(_nvml_reason(pynvml, exc))
        for index in range(count):
            try:
                gpus.append(_nvml_gpu(pynvml, index))
            except pynvml.NVMLError as exc:
                skipped.append(f"GPU {index}: {_nvml_reason(pynvml, exc)}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    if not gpus:
        return _none("; ".join(skipped) if skipped else "NVML found no GPUs")
    return Inventory(tuple(gpus), f"nvml (skipped {'; '.join(skipped)})" if skipped else "nvml")


def _nvml_gpu(pynvml: Any, index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(pynvml.nvmlDeviceGetName(handle)).strip()
    memory_mib = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024)
    try:
        minor: int | None = int(pynvml.nvmlDeviceGetMinorNumber(handle))
    except pynvml.NVMLError:
        minor = None  # not supported on some platforms (WSL)
    return Gpu(
        index=index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)).strip(),
        name=name,
        kind=kind_of(name, memory_mib),
        memory_mib=memory_mib,
        minor=minor,
    )


# ---------------------------------------------------------------------------
# allocation


def sample(indices: Sequence[int]) -> dict[int, tuple[float, int]]:
    """``index -> (utilization 0..1, memory used in bytes)`` of these GPUs, from NVML;
    empty where NVML cannot say (no driver, fake GPUs). For ``/metrics``, at scrape time."""
    if not indices:
        return {}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    out: dict[int, tuple[float, int]] = {}
    try:
        for index in indices:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:
                continue
            out[index] = (float(rates.gpu) / 100.0, int(memory.used))
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return out


class GpuAllocator:
    """Hands this node's GPUs out exclusively, one owner (a container) at a time per GPU.

    >>> alloc = GpuAllocator(Inventory((Gpu(0, "GPU-1", "NVIDIA L4", "L4", 23034, 0),), "nvml"))
    >>> option, gpus = alloc.allocate("ctr-1", [{"type": "H100", "count": 1}, {"type": "L4"}])
    >>> option, [g.index for g in gpus], alloc.allocate("ctr-2", [{"type": "L4"}])
    ({'type': 'L4'}, [0], None)
    >>> alloc.release("ctr-1")
    """

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._owners: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def check(self, options: Sequence[Mapping[str, Any]]) -> str | None:
        """``None`` when some option fits this node with every GPU free; else why not.

        >>> GpuAllocator(Inventory((), "none: NVML: NVIDIA driver not loaded")).check(
        ...     [{"type": "T4", "count": 1}])
        "no node offers gpu='T4' (this node has no GPUs (NVML: NVIDIA driver not loaded))"
        """
        if not options:
            return None
        for option in options:
            if self._pick(option, self.inventory.gpus) is not None:
                return None
        wanted = [_format_option(option) for option in options]
        shown = repr(wanted[0]) if len(wanted) == 1 else repr(wanted)
        return f"no node offers gpu={shown} (this node has {self.inventory.describe()})"

    def allocate(
        self, owner: str, options: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, Any], list[Gpu]] | None:
        """Reserve GPUs for ``owner`` by the first option (in order) that fits the free GPUs.

        Returns ``(option, gpus)`` or ``None`` when every option is busy (or impossible: use
        ``check`` for that). Raises ``ValueError`` for no options or an owner holding GPUs.
        """
        if not options:
            raise ValueError("allocate() needs at least one GPU option")
        with self._lock:
            if owner in self._owners:
                held = self._owners[owner]
                raise ValueError(f"{owner!r} already holds GPUs {held}; release them first")
            taken = {index for indices in self._owners.values() for index in indices}
            free = [gpu for gpu in self.inventory.gpus if gpu.index not in taken]
            for option in options:
                picked = self._pick(option, free)
                if picked is not None:
                    self._owners[owner] = [gpu.index for gpu in picked]
                    return dict(option), picked
            return None

    def release(self, owner: str) -> None:
        """Give back ``owner``'s GPUs; a no-op when it holds none."""
        with self._lock:
            self._owners.pop(owner, None)

    def busy(self) -> dict[str, list[int]]:
        """Owner -> indices of the GPUs it holds."""
        with self._lock:
            return {owner: list(indices) for owner, indices in self._owners.items()}

    def free_count(self) -> int:
        with self._lock:
            taken = sum(len(indices) for indices in self._owners.values())
        return len(self.inventory.gpus) - taken

    @staticmethod
    def _pick(option: Mapping[str, Any], gpus: Sequence[Gpu]) -> list[Gpu] | None:
        """``count`` GPUs of a single satisfying kind, exact kinds before upgrades."""
        wanted, count = _request_type(option), _request_count(option)
        if wanted == "ANY":
            kinds = tuple(dict.fromkeys(gpu.kind for gpu in gpus))
        else:
            kinds = _CANDIDATES.get(wanted, ())
        for kind in kinds:
            same = [gpu for gpu in gpus if gpu.kind == kind]
            if len(same) >= count:
                return same[:count]
        return None


# ---------------------------------------------------------------------------
# what a container needs


def device_paths(gpus: Sequence[Gpu], dev: str = "/dev") -> list[str]:
    """Device nodes to bind into a container for ``gpus``: ``[]`` when all are fake.

    Each real GPU's ``/dev/nvidiaN`` plus the control nodes (``nvidiactl``, ``nvidia-uvm``,
    ``nvidia-uvm-tools``, ``nvidia-modeset``, the ``nvidia-caps`` directory) that exist.

    >>> device_paths([Gpu(0, "GPU-1", "NVIDIA H100 80GB HBM3", "H100", 81559, 0)])  # doctest: +SKIP
    ['/dev/nvidia0', '/dev/nvidiactl', '/dev/nvidia-uvm', '/dev/nvidia-uvm-tools']
    """
    real = [gpu for gpu in gpus if not gpu.fake]
    if not real:
        return []
    paths = [os.path.join(dev, f"nvidia{gpu.minor}") for gpu in real if gpu.minor is not None]
    paths += [os.path.join(dev, name) for name in _CONTROL_DEVICES]
    return [path for path in dict.fromkeys(paths) if os.path.exists(path)]


def _ldconfig_entries(text: str, machine: str | None = None) -> list[str]:
    """Paths of the driver libraries in ``ldconfig -p`` output, for this machine's ABI only."""
    arch = _LDCONFIG_ARCH.get((machine or platform.machine()).lower(), "x86-64")
    paths = []
    for line in text.splitlines():
        m = _LDCONFIG_LINE_RE.match(line)
        if not m or arch not in m.group("flags").split(","):
            continue
        if _DRIVER_LIBRARY_RE.match(m.group("name")):
            paths.append(m.group("path"))
    return paths


def _resolve_libraries(paths: Sequence[str]) -> list[str]:
    """Each library path and the real file behind it, one path per basename, first wins."""
    chosen: dict[str, str] = {}
    for path in paths:
        if not os.path.exists(path):
            continue
        for candidate in (os.path.abspath(path), os.path.realpath(path)):
            chosen.setdefault(os.path.basename(candidate), candidate)
    return list(chosen.values())


def driver_files() -> list[str]:
    """Host paths of the NVIDIA user-space driver files a GPU container needs; ``[]`` if none.

    Libraries (``libcuda.so*``, ``libnvidia-ml.so*``, ...) come from ``ldconfig -p`` for this
    machine's ABI, with both their soname links and the versioned files behind them, one path
    per basename (bind them to ``/usr/local/nvidia/lib64/<basename>``); then ``nvidia-smi``
    and ``nvidia-debugdump`` when on ``PATH`` (bind to ``/usr/local/nvidia/bin/``).

    >>> driver_files()                      # doctest: +SKIP
    ['/usr/lib/x86_64-linux-gnu/libcuda.so.1', ..., '/usr/bin/nvidia-smi']
    """
    ldconfig = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None
    )
    text = ""
    if ldconfig:
        try:
            text = subprocess.run(
                [ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
    files = _resolve_libraries(_ldconfig_entries(text))
    for binary in _DRIVER_BINARIES:
        found = shutil.which(binary)
        if found:
            files.append(os.path.abspath(found))
    return files


def visible_devices_env(gpus: Sequence[Gpu]) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES`` for a container's ``gpus``.

    Real GPUs are named by UUID, which stays right whichever device nodes the container sees
    and however CUDA orders them; fake GPUs by index. No GPUs gives ``""`` (CUDA sees none).

    >>> visible_devices_env([Gpu(3, "GPU-fake-0003", "Fake T4", "T4", 15360, None, fake=True)])
    {'CUDA_VISIBLE_DEVICES': '3', 'NVIDIA_VISIBLE_DEVICES': '3'}
    """
    value = ",".join(str(gpu.index) if gpu.fake else gpu.uuid for gpu in gpus)
    return {"CUDA_VISIBLE_DEVICES": value, "NVIDIA_VISIBLE_DEVICES": value}
