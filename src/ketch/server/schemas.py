"""What each RPC's request body may hold, checked before its handler runs.

One ``msgspec.Struct`` per method, named after it. ``validate`` only checks:
handlers keep reading the plain dict, so a valid request behaves as before,
and a wrong type, a missing field or a number SQLite cannot store is a 400
``InvalidError`` naming the field instead of whatever the handler (or the
database) would have raised. Fields a schema does not list are allowed, so
older and newer clients keep working. Function specs and images are typed
one level deep (the handlers and ``auth.host_paths`` read them before
``from_wire`` does); the free-form parts inside them (a layer's spec, a web
or schedule config) are left to the code that reads them.

Each field list was read off the handler and off every client call that
sends the method (``rpc("Method", ...)`` under ``ketch/``). Checking costs
0.6 us for a DictGet body and 1.3 us for a ``.remote()`` CallCreate (timeit,
best of 5): well inside the 0.1 ms a warm call may grow by.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..exception import InvalidError, ServerError

_I64_MAX = 2**63 - 1

Int64 = Annotated[int, Meta(ge=-(2**63), le=_I64_MAX)]  # what a SQLite INTEGER holds
Count = Annotated[int, Meta(ge=0, le=_I64_MAX)]  # sequence numbers, offsets, indices, sizes
Positive = Annotated[int, Meta(ge=1, le=_I64_MAX)]
Limit = Annotated[int, Meta(ge=1, le=1_000_000)]  # page sizes (handlers cap them further)
Seconds = Annotated[float, Meta(ge=0, le=3600)]  # waits and long polls (handlers cap them lower)
Ttl = Annotated[float, Meta(ge=0, le=1e9)]
Time = Annotated[float, Meta(ge=-1e12, le=1e12)]  # a Unix time; the bounds also refuse nan and inf
Amount = Annotated[float, Meta(ge=0, le=1e12)]  # finite, non-negative: delays, timeouts, resources
Mode = Annotated[int, Meta(ge=0, le=0o177777)]
Id = Annotated[str, Meta(max_length=128)]
Name = Annotated[str, Meta(max_length=256)]  # handlers apply the stricter rules of each kind
Path = Annotated[str, Meta(max_length=4096)]
Text = Annotated[str, Meta(max_length=65536)]
Kind = Literal["dict", "queue", "secret", "volume"]
Env = dict[str, str | None]
Port = Annotated[int, Meta(ge=1, le=65535)]

# msgpack keeps bytes and str apart; without this, convert would base64-decode a str into bytes.
_NATIVE = (bytes,)
_MAX_MESSAGE = 400


class _Request(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """The base of every request schema (its subclasses are the table below)."""


class _Part(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """An item inside a request (an input, a file, a function spec)."""


# -- what apps and images are made of --------------------------------------------------


class ImageLayer(_Part):
    hash: Id
    kind: Name
    spec: dict[str, Any]
    local: dict[str, Any] = {}
    blob: bytes = b""
    force_build: bool = False


class ImageMount(_Part):
    kind: Name
    local_path: Path
    remote_path: Path
    ignore: list[Path] = []


class ImageWire(_Part):
    """``Image.to_wire()``: layers with their hashes (``from_wire`` checks them), mounts, notes."""

    version: Int64
    layers: list[ImageLayer]
    mounts: list[ImageMount] = []
    notes: list[Any] = []


class FunctionWire(_Part):
    """``FunctionSpec.to_wire()``: every field the dataclass has, typed as it is."""

    tag: Name
    module_name: Name
    qualname: Name
    module_file: Path | None = None
    root_dir: Path | None = None
    serialized_fn: bytes | None = None
    is_class: bool = False
    is_generator: bool = False
    methods: dict[str, dict[str, Any]] = {}
    timeout: Amount = 300.0
    max_retries: Count = 0
    backoff_coefficient: Amount = 2.0
    initial_delay: Amount = 1.0
    max_delay: Amount = 60.0
    min_containers: Count = 0
    max_containers: Count | None = None
    buffer_containers: Count = 0
    scaledown_window: Amount = 60.0
    max_inputs: Count = 1
    target_inputs: Count | None = None
    batch_max_size: Count = 0
    batch_wait_ms: Count = 0
    env: Env = {}
    gpu: list[dict[str, Any]] = []
    cpu: tuple[Amount, Amount | None] | None = None  # [request, limit]
    memory: tuple[Amount, Amount | None] | None = None
    signature: bytes | None = None
    image: ImageWire | None = None
    block_network: bool = False
    ephemeral_disk: Count | None = None  # MiB
    secrets: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    web: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    cluster_size: Annotated[int, Meta(ge=0, le=64)] = 0  # a gang's containers
    validate_args: bool = True
    container_max_inputs: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    restrict_modal_access: bool = False
    memory_snapshot: bool = False


# -- apps and functions -------------------------------------------------------


class Status(_Request):
    pass


class AppLookup(_Request):
    name: Name
    create_if_missing: bool = False


class AppCreate(_Request):
    app_id: Id
    functions: list[FunctionWire]
    name: Name | None = None
    deployed: bool = False
    source_hash: Text | None = None
    note: Text | None = None


class AppStop(_Request):
    app_id: Id | None = None
    name: Name | None = None
    wait: Seconds = 5.0


class AppHeartbeat(_Request):
    app_id: Id


class AppList(_Request):
    pass


class AppInfo(_Request):
    app_id: Id | None = None
    name: Name | None = None


class DashboardLogin(_Request):
    pass


class CallList(_Request):
    app: Name | None = None
    function: Name | None = None
    failed: bool = False
    limit: Limit = 50


class CallShow(_Request):
    call_id: Id
    limit: Limit = 20


class CallReplay(_Request):
    call_id: Id
    limit: Limit = 10


class CallReplaySpec(_Request):
    call_id: Id
    limit: Limit = 10


class UsageReport(_Request):
    by: Literal["day", "app", "function", "container"] = "app"
    app: Name | None = None
    function: Name | None = None
    since: Time | None = None
    call_id: Id | None = None


class AppBudgetSet(_Request):
    name: Name
    usd_per_day: Amount | None = None


class AppLogs(_Request):
    app_id: Id | None = None
    name: Name | None = None
    after: Count = 0
    timeout: Seconds = 0.0
    limit: Limit = 1000
    since: Time | None = None
    until: Time | None = None
    search: Text | None = None
    function: Name | None = None
    call_id: Id | None = None
    container_id: Id | None = None


class Probe(msgspec.Struct, forbid_unknown_fields=True):
    tcp_port: Port | None = None
    exec_argv: list[Text] | None = None
    interval_ms: Annotated[int, Meta(ge=10, le=3_600_000)] = 100


class Pty(msgspec.Struct, forbid_unknown_fields=True):
    rows: Annotated[int, Meta(ge=1, le=10_000)] = 24
    cols: Annotated[int, Meta(ge=1, le=10_000)] = 80


class SandboxCreate(_Request):
    app_id: Id
    spec: FunctionWire
    cmd: list[Text] = []
    timeout: Amount | None = None
    idle_timeout: Amount | None = None
    workdir: Path | None = None
    name: Name | None = None
    tags: dict[Name, Text] = {}
    probe: Probe | None = None
    ports: list[Port] = []
    pty: bool = False
    function_id: Id | None = None  # `ketch shell FILE::function`: that function's container
    allowlist: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=64)] | None = (
        None
    )


class SandboxGet(_Request):
    sandbox_id: Id | None = None
    app_name: Name | None = None  # with name: a running sandbox by name
    name: Name | None = None


class SandboxSetTags(_Request):
    sandbox_id: Id
    tags: dict[Name, Text] = {}


class SandboxList(_Request):
    app_id: Id | None = None
    tags: dict[Name, Text] = {}


class SandboxTerminate(_Request):
    sandbox_id: Id


class SandboxWait(_Request):
    sandbox_id: Id
    timeout: Seconds = 0.0


class SandboxExec(_Request):
    sandbox_id: Id
    argv: list[Text]
    workdir: Path | None = None
    env: Env = {}
    timeout: Amount | None = None
    secrets: list[dict[str, Any]] = []
    pty: bool | Pty = False


class SandboxWaitReady(_Request):
    sandbox_id: Id
    timeout: Seconds = 0.0


class SandboxSnapshot(_Request):
    sandbox_id: Id


class SandboxTunnels(_Request):
    sandbox_id: Id
    timeout: Seconds = 0.0


class SandboxExecResize(_Request):
    sandbox_id: Id
    exec_id: Id
    rows: Annotated[int, Meta(ge=1, le=10_000)]
    cols: Annotated[int, Meta(ge=1, le=10_000)]


class SandboxExecRead(_Request):
    sandbox_id: Id
    exec_id: Id
    fd: Literal[1, 2] = 1
    offset: Count = 0
    timeout: Seconds = 0.0


class SandboxExecWrite(_Request):
    sandbox_id: Id
    exec_id: Id
    data: bytes = b""
    eof: bool = False


class SandboxExecWait(_Request):
    sandbox_id: Id
    exec_id: Id
    timeout: Seconds = 0.0


class SandboxFile(_Request):
    sandbox_id: Id
    op: Literal["read", "write", "ls", "mkdir", "rm", "stat"]
    path: Path
    offset: Count = 0
    length: Annotated[int, Meta(ge=0, le=16 << 20)] = 0
    data: Annotated[bytes, Meta(max_length=16 << 20)] = b""
    append: bool = False
    parents: bool = False
    recursive: bool = False


class InteractNext(_Request):
    app_id: Id
    timeout: Seconds = 0.0


class TunnelOpen(_Request):
    port: Port


class TunnelClose(_Request):
    port: Port


class NodeList(_Request):
    pass


class ContainerList(_Request):
    app_id: Id | None = None
    name: Name | None = None


class ContainerStop(_Request):
    container_id: Id


class ContainerLogs(_Request):
    container_id: Id
    after: Count = 0
    timeout: Seconds = 0.0
    limit: Limit = 1000


class AppHistory(_Request):
    name: Name


class AppRollback(_Request):
    name: Name
    version: Int64 | None = None


class FunctionLookup(_Request):
    app_name: Name
    tag: Name


class FunctionGetCurrentStats(_Request):
    function_id: Id


class FunctionBindOptions(_Request):
    function_id: Id
    options: dict[str, Any] = {}  # FunctionSpec fields; ketch._spec.apply_overrides checks them


class FunctionUpdateAutoscaler(_Request):
    function_id: Id
    settings: dict[str, Any] = {}


# -- calls ------------------------------------------------------------------------


class CallInput(_Part):
    idx: Count
    args: bytes | None = None
    blob_id: Id | None = None


def _distinct(inputs: list[CallInput]) -> None:
    # Found by the fuzz test: a repeated idx failed the insert halfway, leaving rows for the next commit.
    if len({i.idx for i in inputs}) != len(inputs):
        raise ValueError("two of `inputs` have the same idx")


class CallCreate(_Request):
    call_id: Id
    function_id: Id
    inputs: list[CallInput]
    kind: Literal["single", "gen", "spawn", "map", "spawn_map"] = "single"
    params: bytes | None = None  # a class's parameters, packed
    method: Name | None = None
    closed: bool = False
    wait: Seconds = 0.0
    limit: Limit = 1000
    traceparent: Annotated[str, Meta(max_length=128)] | None = None  # W3C trace context

    def __post_init__(self) -> None:
        _distinct(self.inputs)


class CallPutInputs(_Request):
    call_id: Id
    inputs: list[CallInput]
    n_inputs: Count | None = None

    def __post_init__(self) -> None:
        _distinct(self.inputs)


class CallGetOutputs(_Request):
    call_id: Id
    after: Count = 0
    timeout: Seconds = 0.0
    limit: Limit = 1000


class CallCancel(_Request):
    call_id: Id
    terminate: bool = False


class ImageBuild(_Request):
    image: ImageWire
    force: bool | Literal["", "all", "marked"] | None = None


class ImageFromId(_Request):
    image_id: Id


class ImageBuildStatus(_Request):
    build_id: Id
    offset: Count = 0
    wait: Seconds = 0.0


# -- named objects, Dicts and Queues -----------------------------------------------


class ObjectGet(_Request):
    kind: Kind
    name: Name
    create_if_missing: bool = False


class ObjectCreate(_Request):
    kind: Kind
    name: Name


class ObjectEphemeral(_Request):
    kind: Kind


class ObjectDelete(_Request):
    kind: Kind
    object_id: Id | None = None
    name: Name | None = None
    allow_missing: bool = False


class ObjectList(_Request):
    kind: Kind


class DictPut(_Request):
    object_id: Id
    items: list[tuple[bytes, bytes]]  # pickled key, pickled value
    skip_if_exists: bool = False


class DictGet(_Request):
    object_id: Id
    key: bytes
    pop: bool = False


class DictLen(_Request):
    object_id: Id


class DictScan(_Request):
    object_id: Id
    after: bytes | None = None
    limit: Limit = 1000


class DictClear(_Request):
    object_id: Id


class QueuePut(_Request):
    object_id: Id
    items: list[bytes]
    partition: Name | None = None
    partition_ttl: Ttl | None = None


class QueueGet(_Request):
    object_id: Id
    partition: Name | None = None
    n: Positive = 1
    wait: Seconds = 0.0


class QueueLen(_Request):
    object_id: Id
    partition: Name | None = None
    total: bool = False


class QueueClear(_Request):
    object_id: Id
    partition: Name | None = None
    all: bool = False


class QueuePeek(_Request):
    object_id: Id
    partition: Name | None = None
    after: Count = 0
    limit: Limit = 1000


# -- Secrets, proxy and API tokens -----------------------------------------------


class SecretCreate(_Request):
    name: Name
    env: Env
    force: bool = False


class SecretUpdate(_Request):
    name: Name
    env: Env


class SecretLookup(_Request):
    name: Name
    required_keys: list[Name] | None = None


class SecretSeal(_Request):
    env: Env


class ProxyTokenCreate(_Request):
    pass


class ProxyTokenList(_Request):
    pass


class ProxyTokenDelete(_Request):
    token_id: Id


class ApiTokenCreate(_Request):
    role: Name | None = None  # the handler names the roles there are


class ApiTokenList(_Request):
    pass


class ApiTokenRevoke(_Request):
    token_id: Id


# -- Volumes ----------------------------------------------------------------------


class VolumeFile(_Part):
    path: Path
    blob_id: Id
    size: Count
    mode: Mode | None = None
    mtime: Time | None = None


class VolumeInfo(_Request):
    pass


class VolumeList(_Request):
    object_id: Id
    path: Path = "/"
    recursive: bool = False


class VolumeGetFile(_Request):
    object_id: Id
    path: Path


class VolumePutFiles(_Request):
    object_id: Id
    files: list[VolumeFile]
    force: bool = False
    dirs: list[Path] = []


class VolumeRemove(_Request):
    object_id: Id
    path: Path
    recursive: bool = False


class VolumeCopy(_Request):
    object_id: Id
    src_paths: list[Path]
    dst_path: Path
    recursive: bool = False


class VolumeCommit(_Request):
    object_id: Id
    container_id: Id | None = None  # missing ones get the handler's own explanation
    token: Text | None = None


class VolumeReload(_Request):
    object_id: Id
    container_id: Id | None = None
    token: Text | None = None


SCHEMAS: dict[str, type[_Request]] = {cls.__name__: cls for cls in _Request.__subclasses__()}


def validate(method: str, body: dict[str, Any]) -> None:
    """Raise ``InvalidError`` naming the field if ``body`` does not fit ``method``'s schema.

    A method without a schema fails closed (a ``ServerError``): every handler
    must have one, which a unit test checks.

    Example: ``validate("CallGetOutputs", {"call_id": 7})`` raises
    ``InvalidError("CallGetOutputs: Expected `str`, got `int` - at `$.call_id`")``.
    """
    schema = SCHEMAS.get(method)
    if schema is None:
        raise ServerError(f"{method} has no request schema on this control plane")
    try:
        msgspec.convert(body, schema, strict=True, builtin_types=_NATIVE)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if len(text) > _MAX_MESSAGE:  # msgspec quotes a bad enum value whole
            text = f"{text[: _MAX_MESSAGE // 2]} ... {text[-_MAX_MESSAGE // 2 :]}"
        raise InvalidError(f"{method}: {text}") from None
