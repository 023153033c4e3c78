"""The validated options of one function, shared by SDK, server and runtime."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from .exception import InvalidError
from .retries import Retries

MAX_TIMEOUT = 24 * 3600
DEFAULT_EPHEMERAL_DISK_MIB = (
    20 * 1024
)  # a container's writable layer and /tmp, unless ephemeral_disk= says
MAX_EPHEMERAL_DISK_MIB = 3 * 1024 * 1024
DEFAULT_TIMEOUT = 300
DEFAULT_SCALEDOWN_WINDOW = 60.0

KNOWN_GPUS = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "L40S",
    "H100",
    "H100!",
    "H200",
    "B200",
    "RTX-PRO-6000",
    "ANY",
)
_GPU_RE = re.compile(r"^(?P<kind>[A-Za-z0-9!-]+?)(?::(?P<count>\d+))?$")


def parse_gpu(gpu: Any) -> list[dict[str, Any]]:
    """Turn ``"H100"``, ``"A100-80GB:2"``, ``"any"`` or a list of them into specs."""
    if gpu is None:
        return []
    options = gpu if isinstance(gpu, list | tuple) else [gpu]
    if not options:
        raise InvalidError("gpu= list must not be empty")
    parsed = []
    for option in options:
        if not isinstance(option, str):
            raise InvalidError(f"gpu must be a string like 'H100' or 'A100-80GB:2', not {option!r}")
        m = _GPU_RE.match(option.strip())
        kind = m.group("kind").upper() if m else ""
        if kind not in KNOWN_GPUS:
            known = ", ".join(k for k in KNOWN_GPUS if k != "ANY")
            raise InvalidError(f"unknown GPU type {option!r}; known types: {known}, or 'any'")
        count = int(m.group("count") or 1) if m else 1
        if not 1 <= count <= 8:
            raise InvalidError(f"GPU count must be between 1 and 8, got {count} in {option!r}")
        parsed.append({"type": kind, "count": count})
    return parsed


def _resource(value: Any, name: str, kind: type) -> list[float | None] | None:
    """``[request, limit]``; as in Modal a bare number is a request only (``limit`` None)."""
    if value is None:
        return None
    pair = value if isinstance(value, tuple) else (value, None)
    if (
        len(pair) != 2
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in pair if v is not None
        )
        or pair[0] is None
    ):
        raise InvalidError(f"{name} must be a number or a (request, limit) tuple, got {value!r}")
    request, limit = kind(pair[0]), (kind(pair[1]) if pair[1] is not None else None)
    if request <= 0 or (limit is not None and limit < request):
        raise InvalidError(f"{name} must be positive with limit >= request, got {value!r}")
    return [request, limit]


def _int_option(value: Any, name: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidError(f"{name} must be an int, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidError(f"{name} must be {bound}, got {value}")
    return value


@dataclass
class FunctionSpec:
    """Everything the control plane and a container need to run one function."""

    tag: str
    module_name: str
    qualname: str
    module_file: str | None = None
    root_dir: str | None = None
    serialized_fn: bytes | None = None
    is_class: bool = False
    is_generator: bool = False
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = 0
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0
    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    scaledown_window: float = DEFAULT_SCALEDOWN_WINDOW
    max_inputs: int = 1
    target_inputs: int | None = None
    batch_max_size: int = 0
    batch_wait_ms: int = 0
    env: dict[str, str] = field(default_factory=dict)
    gpu: list[dict[str, Any]] = field(default_factory=list)
    cpu: list[float | None] | None = None
    memory: list[float | None] | None = None
    signature: bytes | None = None
    image: dict[str, Any] | None = None  # Image.to_wire(); applied by the sandbox runtime
    block_network: bool = False
    ephemeral_disk: int | None = (
        None  # MiB for the writable layer and /tmp (None: DEFAULT_EPHEMERAL_DISK_MIB)
    )
    # One entry per Secret, in order: {"name", "id"} for a named one, {"sealed"} for
    # inline values sealed by the control plane. Never values in clear text.
    secrets: list[dict[str, Any]] = field(default_factory=list)
    # One entry per mounted Volume: {"path": "/data", "object_id": "vo-…", "name": …}.
    volumes: list[dict[str, Any]] = field(default_factory=list)
    # A web endpoint's configuration (``_web``): {"type": "fastapi"|"asgi"|"wsgi"|"server",
    # "label", "requires_proxy_auth", ...}; class methods carry theirs in ``methods``.
    web: dict[str, Any] | None = None
    # A deployed app's source snapshot ({"blob_id", "hash"}, see ``_source``); None: the files on disk.
    source: dict[str, Any] | None = None
    # ``schedule.Cron`` / ``Period`` on the wire; fired by the control plane for deployed apps.
    schedule: dict[str, Any] | None = None
    # @ketch.experimental.clustered(size=N): each call runs in a gang of N containers (0: not).
    cluster_size: int = 0
    # Check arguments against the function's type hints before they travel (``_typecheck``).
    validate_args: bool = True
    # Inputs one container takes before it stops (Modal's ``max_inputs``); 0: no limit.
    container_max_inputs: int = 0
    # Modal's ``restrict_modal_access``: the container's token reaches no RPC (no Dicts,
    # Queues, Volumes' API, calls or sandboxes); its inputs and outputs still flow.
    restrict_modal_access: bool = False
    # Modal's ``enable_memory_snapshot``: containers fork from a template that has imported
    # the module and run the ``@enter(snap=True)`` hooks (``ketch.worker.forks``).
    memory_snapshot: bool = False

    def web_methods(self) -> dict[str | None, dict[str, Any]]:
        """Method name (None for a function) -> web configuration, for every web endpoint here."""
        if not self.is_class:
            return {None: self.web} if self.web else {}
        return {name: m["web"] for name, m in self.methods.items() if m.get("web")}

    def retries(self) -> Retries:
        return Retries(
            self.max_retries, self.backoff_coefficient, self.initial_delay, self.max_delay
        )

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> FunctionSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        spec = cls(**{k: v for k, v in data.items() if k in names})
        _check_secret_entries(spec.secrets)
        return spec


def _check_secret_entries(entries: Any) -> None:
    """A spec refers to Secrets by id or carries them sealed; clear values are refused."""
    if not isinstance(entries, list):
        raise InvalidError("spec secrets must be a list")
    for entry in entries:
        sealed = (
            isinstance(entry, dict) and isinstance(entry.get("sealed"), bytes) and len(entry) == 1
        )
        named = (
            isinstance(entry, dict)
            and set(entry) <= {"name", "id"}
            and isinstance(entry.get("id"), str)
        )
        if not (sealed or named):
            raise InvalidError(
                "a spec's secrets must be sealed by the control plane (SecretSeal) or named by id"
            )


def build_options(
    *,
    timeout: Any = DEFAULT_TIMEOUT,
    retries: Any = None,
    min_containers: Any = 0,
    max_containers: Any = None,
    buffer_containers: Any = 0,
    scaledown_window: Any = DEFAULT_SCALEDOWN_WINDOW,
    env: Any = None,
    gpu: Any = None,
    cpu: Any = None,
    memory: Any = None,
    ephemeral_disk: Any = None,
) -> dict[str, Any]:
    """Validate decorator options; every problem is an ``InvalidError`` here, at decoration."""
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise InvalidError(f"timeout must be a number of seconds, not {timeout!r}")
    if not 1 <= timeout <= MAX_TIMEOUT:
        raise InvalidError(
            f"timeout must be between 1 and {MAX_TIMEOUT} seconds (24 h), got {timeout}"
        )
    policy = Retries.coerce(retries)
    min_c = _int_option(min_containers, "min_containers", 0, 1000)
    max_c = (
        None if max_containers is None else _int_option(max_containers, "max_containers", 1, 10_000)
    )
    if max_c is not None and min_c > max_c:
        raise InvalidError(f"min_containers ({min_c}) cannot exceed max_containers ({max_c})")
    buffer = _int_option(buffer_containers, "buffer_containers", 0, 1000)
    if not isinstance(scaledown_window, int | float) or not 1 <= scaledown_window <= MAX_TIMEOUT:
        raise InvalidError(
            f"scaledown_window must be between 1 and {MAX_TIMEOUT} seconds, got {scaledown_window!r}"
        )
    env = dict(env or {})
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidError(f"env must map str to str; bad entry {key!r}: {value!r}")
    return {
        "timeout": float(timeout),
        "max_retries": policy.max_retries,
        "backoff_coefficient": policy.backoff_coefficient,
        "initial_delay": policy.initial_delay,
        "max_delay": policy.max_delay,
        "min_containers": min_c,
        "max_containers": max_c,
        "buffer_containers": buffer,
        "scaledown_window": float(scaledown_window),
        "env": env,
        "gpu": parse_gpu(gpu),
        "cpu": _resource(cpu, "cpu", float),
        "memory": _resource(memory, "memory", int),
        "ephemeral_disk": None
        if ephemeral_disk is None
        else _int_option(ephemeral_disk, "ephemeral_disk (MiB)", 64, MAX_EPHEMERAL_DISK_MIB),
    }


# What ``with_options``, ``with_concurrency``, ``with_batching`` and ``update_autoscaler``
# may change in a function's spec (its FunctionSpec fields).
OVERRIDABLE = frozenset(
    {
        "timeout",
        "max_retries",
        "backoff_coefficient",
        "initial_delay",
        "max_delay",
        "min_containers",
        "max_containers",
        "buffer_containers",
        "scaledown_window",
        "env",
        "gpu",
        "cpu",
        "memory",
        "secrets",
        "volumes",
        "max_inputs",
        "target_inputs",
        "batch_max_size",
        "batch_wait_ms",
    }
)


def option_fields(
    *,
    cpu: Any = None,
    memory: Any = None,
    gpu: Any = None,
    env: Any = None,
    retries: Any = None,
    timeout: Any = None,
    min_containers: Any = None,
    max_containers: Any = None,
    buffer_containers: Any = None,
    scaledown_window: Any = None,
) -> dict[str, Any]:
    """The spec fields that the options given (not None) set, checked as the decorators check them."""
    given = {
        k: v
        for k, v in {
            "cpu": cpu,
            "memory": memory,
            "gpu": gpu,
            "env": env,
            "retries": retries,
            "timeout": timeout,
            "min_containers": min_containers,
            "max_containers": max_containers,
            "buffer_containers": buffer_containers,
            "scaledown_window": scaledown_window,
        }.items()
        if v is not None
    }
    checked = build_options(**given)
    fields = {k: checked[k] for k in given if k in checked}
    if "retries" in given:
        fields.update({k: checked[k] for k in RETRY_FIELDS})
    return fields


RETRY_FIELDS = ("max_retries", "backoff_coefficient", "initial_delay", "max_delay")


def apply_overrides(spec: FunctionSpec, overrides: Any) -> FunctionSpec:
    """``spec`` with ``overrides`` (FunctionSpec fields on the wire) in place.

    They may come from any client, so the result is checked as a decorator checks its
    options; ``env`` is merged into the function's, ``secrets`` and ``volumes`` replace its.
    """
    if not isinstance(overrides, dict):
        raise InvalidError("options must be a map of option names to values")
    unknown = sorted(set(overrides) - OVERRIDABLE)
    if unknown:
        raise InvalidError(f"these options cannot be changed here: {', '.join(map(str, unknown))}")
    new = dataclasses.replace(spec, **overrides)
    if "env" in overrides and isinstance(overrides["env"], dict):
        new.env = {**spec.env, **overrides["env"]}
    try:
        checked = build_options(
            timeout=new.timeout,
            retries=Retries(
                new.max_retries, new.backoff_coefficient, new.initial_delay, new.max_delay
            ),
            min_containers=new.min_containers,
            max_containers=new.max_containers,
            buffer_containers=new.buffer_containers,
            scaledown_window=new.scaledown_window,
            env=new.env,
            gpu=[f"{g['type']}:{g['count']}" for g in new.gpu] or None,
            cpu=tuple(new.cpu) if new.cpu is not None else None,
            memory=tuple(new.memory) if new.memory is not None else None,
            ephemeral_disk=new.ephemeral_disk,
        )
        _check_concurrency(new)
        _check_secret_entries(new.secrets)
        _check_volume_entries(new.volumes)
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidError(f"bad options: {exc}") from None
    for name, value in checked.items():
        setattr(new, name, value)
    return new


def _check_concurrency(spec: FunctionSpec) -> None:
    max_inputs = _int_option(spec.max_inputs, "max_inputs", 1, 1000)
    if spec.target_inputs is not None:
        _int_option(spec.target_inputs, "target_inputs", 1, max_inputs)
    if spec.batch_max_size:
        _int_option(spec.batch_max_size, "max_batch_size", 1, 1000)
        _int_option(spec.batch_wait_ms, "wait_ms", 0, 600_000)
        if max_inputs > 1:
            raise InvalidError("a function cannot take concurrent inputs and batches at once")


def mount_path_ok(clean: str) -> bool:
    """A Volume may be mounted at this (normalized) path: absolute, not ``/``, ``/root``
    or a path of ketch's or the kernel's."""
    return (
        clean.startswith("/")
        and clean not in ("/", "/root")
        and not clean.startswith(("/.ketch", "/proc", "/dev", "/sys"))
    )


def _check_volume_entries(entries: Any) -> None:
    if not isinstance(entries, list):
        raise InvalidError("volumes must be a list")
    paths = []
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        if (
            not isinstance(path, str)
            or not isinstance(entry.get("object_id"), str)
            or not set(entry) <= {"path", "object_id", "name", "read_only"}
            or path != posixpath.normpath(path)
            or not mount_path_ok(path)
        ):
            raise InvalidError(f"bad volume mount {entry!r}")
        paths.append(path)
    if any(a != b and b.startswith(a + "/") for a in paths for b in paths) or len(set(paths)) < len(
        paths
    ):
        raise InvalidError("volume mount paths may not repeat or be nested inside each other")
