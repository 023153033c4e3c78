"""RPC request schemas: every handler has one, real client bodies pass, bad ones name the field."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ketch
from ketch._spec import FunctionSpec
from ketch.exception import InvalidError, ServerError
from ketch.server import api, schemas

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
app = ketch.App("schemas-test")


@app.function(
    image=ketch.Image.debian_slim()
    .pip_install("requests")
    .env({"A": "1"})
    .add_local_dir("/tmp", "/data"),
    gpu="H100:2",
    cpu=(1, 2),
    memory=512,
    timeout=60,
    retries=3,
    max_containers=4,
    env={"A": "1"},
    schedule=ketch.Period(seconds=5),
)
def options_everywhere() -> int:
    return 1


FN = "fu-0123456789abcdef0123"
CALL = "fc-0123456789abcdef0123"
APP = "ap-0123456789abcdef0123"
OBJ = "di-0123456789abcdef0123"
PICKLED = b"\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00\x8c\x02k1\x94."
SPEC = app.registered_functions["options_everywhere"]._ketch_impl._spec.to_wire()
IMAGE = SPEC["image"]

# The bodies real clients send, as the SDK and CLI build them (see the schemas' docstring).
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "Status": [{}],
    "AppCreate": [
        {"app_id": APP, "name": "", "deployed": False, "functions": [SPEC], "source_hash": ""},
        {
            "app_id": APP,
            "name": "web",
            "deployed": True,
            "functions": [SPEC, SPEC],
            "source_hash": "1a2b3c4d",
        },
    ],
    "AppStop": [{"app_id": APP, "wait": 5.0}, {"name": "web"}],
    "AppHeartbeat": [{"app_id": APP}],
    "AppList": [{}],
    "AppInfo": [{"app_id": APP}, {"name": "web"}],
    "SandboxCreate": [
        {
            "app_id": APP,
            "spec": {"tag": "sandbox", "module_name": "", "qualname": "sandbox", "env": {}},
            "cmd": ["sh", "-c", "echo hi"],
            "timeout": 300.0,
            "workdir": None,
            "name": None,
            "tags": {"suite": "e2e"},
            "probe": {"tcp_port": 8000, "interval_ms": 100},
            "ports": [8000, 9000],
            "pty": False,
        },
        {
            "app_id": APP,
            "spec": {"tag": "sandbox", "module_name": "", "qualname": "sandbox", "env": {}},
            "function_id": "fu-0123456789abcdef0123",
            "timeout": 86400.0,
        },
    ],
    "SandboxWaitReady": [{"sandbox_id": "sb-0123456789abcdef0123", "timeout": 50.0}],
    "SandboxTunnels": [{"sandbox_id": "sb-0123456789abcdef0123", "timeout": 50.0}],
    "SandboxSnapshot": [{"sandbox_id": "sb-0123456789abcdef0123"}],
    "SandboxExecResize": [
        {"sandbox_id": "sb-0123456789abcdef0123", "exec_id": "ex-1", "rows": 40, "cols": 120}
    ],
    "TunnelOpen": [{"port": 8000}],
    "InteractNext": [{"app_id": APP, "timeout": 30.0}],
    "TunnelClose": [{"port": 8000}],
    "SandboxGet": [{"sandbox_id": "sb-0123456789abcdef0123"}, {"app_name": "a", "name": "n"}],
    "SandboxSetTags": [{"sandbox_id": "sb-0123456789abcdef0123", "tags": {"k": "v"}}],
    "SandboxList": [{"app_id": None, "tags": {}}, {"app_id": APP, "tags": {"k": "v"}}],
    "SandboxTerminate": [{"sandbox_id": "sb-0123456789abcdef0123"}],
    "SandboxWait": [{"sandbox_id": "sb-0123456789abcdef0123", "timeout": 50.0}],
    "SandboxExec": [
        {
            "sandbox_id": "sb-0123456789abcdef0123",
            "argv": ["echo", "hi"],
            "workdir": "/tmp",
            "env": {"A": "1"},
            "timeout": None,
        },
        {
            "sandbox_id": "sb-0123456789abcdef0123",
            "argv": ["bash"],
            "pty": {"rows": 24, "cols": 80},
        },
    ],
    "SandboxExecRead": [
        {
            "sandbox_id": "sb-0123456789abcdef0123",
            "exec_id": "ex-1",
            "fd": 1,
            "offset": 0,
            "timeout": 50.0,
        }
    ],
    "SandboxExecWrite": [
        {"sandbox_id": "sb-0123456789abcdef0123", "exec_id": "ex-1", "data": b"abc", "eof": True}
    ],
    "SandboxExecWait": [
        {"sandbox_id": "sb-0123456789abcdef0123", "exec_id": "main", "timeout": 0.0}
    ],
    "SandboxFile": [
        {
            "sandbox_id": "sb-0123456789abcdef0123",
            "op": "read",
            "path": "/a",
            "offset": 0,
            "length": 1024,
        },
        {
            "sandbox_id": "sb-0123456789abcdef0123",
            "op": "write",
            "path": "/a",
            "data": b"x",
            "append": True,
        },
        {"sandbox_id": "sb-0123456789abcdef0123", "op": "rm", "path": "/a", "recursive": True},
    ],
    "ContainerList": [{}, {"name": "web"}, {"app_id": APP}],
    "NodeList": [{}],
    "ContainerStop": [{"container_id": "ta-0123456789abcdef0123"}],
    "ContainerLogs": [
        {"container_id": "ta-0123456789abcdef0123", "after": 0, "timeout": 30, "limit": 5000}
    ],
    "DashboardLogin": [{}],
    "CallList": [{"app": "demo", "function": "f", "failed": True, "limit": 20}],
    "CallShow": [{"call_id": "fc-1", "limit": 5}],
    "CallReplay": [{"call_id": "fc-1", "limit": 5}],
    "CallReplaySpec": [{"call_id": "fc-1", "limit": 5}],
    "UsageReport": [
        {"by": "function", "app": "demo", "function": "f", "since": 1.7e9},
        {"call_id": "fc-1"},
    ],
    "AppBudgetSet": [{"name": "demo", "usd_per_day": 5.0}, {"name": "demo", "usd_per_day": None}],
    "AppLogs": [
        {"app_id": APP, "after": 0, "timeout": 30},
        {"name": "web", "after": 12, "timeout": 0, "limit": 5000},
    ],
    "AppHistory": [{"name": "web"}],
    "AppRollback": [{"name": "web"}, {"name": "web", "version": 2}],
    "FunctionLookup": [{"app_name": "web", "tag": "square"}],
    "FunctionGetCurrentStats": [{"function_id": "fu-0123456789abcdef0123"}],
    "FunctionBindOptions": [
        {"function_id": "fu-0123456789abcdef0123", "options": {"timeout": 60.0}},
        {"function_id": "fu-0123456789abcdef0123", "options": {"max_inputs": 4}},
    ],
    "FunctionUpdateAutoscaler": [
        {"function_id": "fu-0123456789abcdef0123", "settings": {"min_containers": 1}},
    ],
    "AppLookup": [{"name": "sandboxes"}, {"name": "sandboxes", "create_if_missing": True}],
    "CallCreate": [
        {
            "call_id": CALL,
            "function_id": FN,
            "kind": "single",
            "params": None,
            "method": None,
            "inputs": [{"idx": 0, "args": PICKLED}],
            "closed": True,
            "wait": 50.0,
        },
        {
            "call_id": CALL,
            "function_id": FN,
            "kind": "map",
            "params": b"\x81\xa1n\x01",
            "method": "run",
            "inputs": [{"idx": 0, "args": PICKLED}, {"idx": 1, "blob_id": "bl-1"}],
            "closed": False,
            "wait": 0,
        },
        {
            "call_id": CALL,
            "function_id": FN,
            "kind": "spawn_map",
            "params": None,
            "method": None,
            "inputs": [],
            "closed": True,
            "wait": 0,
        },
    ],
    "CallPutInputs": [
        {"call_id": CALL, "inputs": [{"idx": 1000, "args": PICKLED}], "n_inputs": None},
        {"call_id": CALL, "inputs": [{"idx": 1001, "blob_id": "bl-2"}], "n_inputs": 1002},
    ],
    "CallGetOutputs": [
        {"call_id": CALL, "after": 0, "timeout": 50.0},
        {"call_id": CALL, "after": 7, "timeout": 0.5},
    ],
    "CallCancel": [{"call_id": CALL, "terminate": False}, {"call_id": CALL}],
    "ImageBuild": [
        {"image": IMAGE, "force": ""},
        {"image": IMAGE, "force": "all"},
        {"image": IMAGE},
    ],
    "ImageFromId": [{"image_id": "im-" + "ab" * 32}],
    "ImageBuildStatus": [
        {"build_id": "bu-1", "offset": 0, "wait": 20},
        {"build_id": "bu-1", "offset": 0},
    ],
    "ObjectGet": [{"kind": "dict", "name": "cache", "create_if_missing": True}],
    "ObjectCreate": [{"kind": "volume", "name": "data"}],
    "ObjectEphemeral": [{"kind": "queue"}],
    "ObjectDelete": [
        {"kind": "dict", "object_id": OBJ},
        {"kind": "secret", "name": "creds", "allow_missing": False},
    ],
    "ObjectList": [{"kind": "secret"}],
    "ProxyTokenCreate": [{}],
    "ProxyTokenList": [{}],
    "ProxyTokenDelete": [{"token_id": "tk-1"}],
    "ApiTokenCreate": [{"role": "invoke"}],
    "ApiTokenList": [{}],
    "ApiTokenRevoke": [{"token_id": "tk-0123456789abcdef0123"}],
    "DictPut": [{"object_id": OBJ, "items": [[PICKLED, PICKLED]], "skip_if_exists": False}],
    "DictGet": [
        {"object_id": OBJ, "key": PICKLED},
        {"object_id": OBJ, "key": PICKLED, "pop": True},
    ],
    "DictLen": [{"object_id": OBJ}],
    "DictScan": [{"object_id": OBJ, "after": None}, {"object_id": OBJ, "after": PICKLED}],
    "DictClear": [{"object_id": OBJ}],
    "QueuePut": [
        {"object_id": OBJ, "items": [PICKLED], "partition": None, "partition_ttl": 86400},
        {"object_id": OBJ, "items": [PICKLED, PICKLED], "partition": "p1", "partition_ttl": 1.5},
    ],
    "QueueGet": [
        {"object_id": OBJ, "n": 1, "partition": None, "wait": 50.0},
        {"object_id": OBJ, "n": 3, "wait": 0.0},
    ],
    "QueueLen": [{"object_id": OBJ, "partition": None, "total": True}],
    "QueueClear": [{"object_id": OBJ, "partition": "p1", "all": False}],
    "QueuePeek": [{"object_id": OBJ, "partition": None, "after": 41}],
    "SecretCreate": [{"name": "creds", "env": {"TOKEN": "abc"}, "force": False}],
    "SecretLookup": [
        {"name": "creds", "required_keys": ["TOKEN"]},
        {"name": "creds", "required_keys": []},
    ],
    "SecretSeal": [{"env": {"TOKEN": "abc", "UNSET": None}}],
    "SecretUpdate": [{"name": "creds", "env": {"TOKEN": "new"}}],
    "VolumeInfo": [{}],
    "VolumeList": [{"object_id": OBJ, "path": "/", "recursive": True}],
    "VolumeGetFile": [{"object_id": OBJ, "path": "a/b.txt"}],
    "VolumePutFiles": [
        {
            "object_id": OBJ,
            "force": False,
            "files": [
                {"path": "a.txt", "blob_id": "ab" * 32, "size": 5, "mode": 0o644, "mtime": 1.7e9}
            ],
        },
        {"object_id": OBJ, "files": [], "dirs": ["empty/dir"]},
    ],
    "VolumeRemove": [{"object_id": OBJ, "path": "a", "recursive": True}],
    "VolumeCopy": [
        {"object_id": OBJ, "src_paths": ["a", "b"], "dst_path": "c", "recursive": False}
    ],
    "VolumeCommit": [{"object_id": OBJ, "container_id": "ta-1", "token": "t0k"}],
    "VolumeReload": [{"object_id": OBJ, "container_id": "ta-1", "token": "t0k"}],
}
LOOSE = {"functions", "image", "spec", "options", "settings"}  # wire dicts checked by their readers
# (FunctionSpec, Image, ketch._spec.apply_overrides)
CASES = [(method, body) for method, bodies in EXAMPLES.items() for body in bodies]


def _leaves(value: Any, path: str) -> Iterator[tuple[str, list[Any], Any]]:
    """``(msgspec path, key path, value)`` of every scalar and None in a body, skipping loose dicts."""
    if isinstance(value, dict):
        for key, item in value.items():
            if path == "$" and key in LOOSE:
                continue
            # msgspec names a Struct field `.key` and a dict value only `[...]`
            plain_dict = path.startswith(("$.env", "$.tags"))
            sub = f"{path}[...]" if plain_dict else f"{path}.{key}"
            for p, keys, leaf in _leaves(item, sub):
                yield p, [key, *keys], leaf
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for p, keys, leaf in _leaves(item, f"{path}[{i}]"):
                yield p, [i, *keys], leaf
    else:
        yield path, [], value


def _replaced(body: Any, keys: list[Any], new: Any) -> Any:
    if not keys:
        return new
    copy = dict(body) if isinstance(body, dict) else list(body)
    copy[keys[0]] = _replaced(body[keys[0]], keys[1:], new)
    return copy


def _wrong(value: Any) -> Any:
    """A value of another msgpack type than ``value``'s."""
    if value is None or isinstance(value, bool):
        return [1]
    if isinstance(value, (int, float)):
        return "12"
    if isinstance(value, str):
        return 12
    return "text"  # bytes: a str is not bytes on this wire


def _fails(method: str, body: Any) -> str:
    with pytest.raises(InvalidError) as info:
        schemas.validate(method, body)
    message = str(info.value)
    assert message.startswith(f"{method}: ")
    return message


def test_every_handler_has_a_schema_and_every_schema_a_handler():
    assert set(schemas.SCHEMAS) == set(api._HANDLERS)
    assert set(EXAMPLES) == set(api._HANDLERS)


def test_a_method_without_schema_fails_closed():
    with pytest.raises(ServerError, match="no request schema"):
        schemas.validate("NoSuchMethod", {})


@pytest.mark.parametrize(("method", "body"), CASES)
def test_bodies_real_clients_send_pass(method: str, body: dict[str, Any]):
    schemas.validate(method, body)
    schemas.validate(method, {**body, "added_by_a_newer_client": [1, {"x": b""}]})


@pytest.mark.parametrize(("method", "body"), CASES)
def test_a_wrong_type_names_the_field(method: str, body: dict[str, Any]):
    for path, keys, leaf in _leaves(body, "$"):
        message = _fails(method, _replaced(body, keys, _wrong(leaf)))
        assert f"`{path}`" in message, (path, message)


@pytest.mark.parametrize(("method", "body"), CASES)
def test_huge_and_negative_ints_name_the_field(method: str, body: dict[str, Any]):
    ints = [(p, k) for p, k, leaf in _leaves(body, "$") if type(leaf) is int]
    for path, keys in ints:
        for huge in (2**70, 2**63, -(2**64)):
            assert f"`{path}`" in _fails(method, _replaced(body, keys, huge))


@pytest.mark.parametrize("method", sorted(EXAMPLES))
def test_a_missing_required_field_is_named(method: str):
    schema = schemas.SCHEMAS[method]
    body = max(EXAMPLES[method], key=len)
    for field in msgspec.structs.fields(schema):
        if field.required:
            message = _fails(method, {k: v for k, v in body.items() if k != field.name})
            assert f"`{field.name}`" in message


def test_bytes_and_str_are_not_interchangeable():
    assert "`$.key`" in _fails("DictGet", {"object_id": OBJ, "key": "k1"})
    assert "`$.call_id`" in _fails("CallGetOutputs", {"call_id": CALL.encode()})


def test_int_is_a_float_but_no_float_is_an_int():
    schemas.validate("CallGetOutputs", {"call_id": CALL, "timeout": 50})
    assert "`$.after`" in _fails("CallGetOutputs", {"call_id": CALL, "after": 1.0})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 1e9])
def test_waits_are_finite_non_negative_and_bounded(bad: float):
    assert "`$.wait`" in _fails("QueueGet", {"object_id": OBJ, "wait": bad})
    assert "`$.timeout`" in _fails("CallGetOutputs", {"call_id": CALL, "timeout": bad})


def test_limits_names_and_paths_are_bounded():
    assert "`$.limit`" in _fails("DictScan", {"object_id": OBJ, "limit": 0})
    assert "`$.name`" in _fails("ObjectGet", {"kind": "dict", "name": "n" * 10_000})
    assert "`$.path`" in _fails("VolumeGetFile", {"object_id": OBJ, "path": "p/" * 5000})


def test_the_exact_message_and_its_length():
    message = _fails("CallGetOutputs", {"call_id": 7})
    assert message == "CallGetOutputs: Expected `str`, got `int` - at `$.call_id`"
    long = _fails("ObjectList", {"kind": "k" * 100_000})  # msgspec quotes a bad enum value whole
    assert len(long) < 500 and long.endswith("`$.kind`")


@pytest.mark.parametrize(
    "body", [{1: "x"}, {"items": [[b"k"]], "object_id": OBJ}, {"items": "kv", "object_id": OBJ}]
)
def test_odd_shapes_are_invalid(body: dict[Any, Any]):
    _fails("DictPut", body)


def test_a_repeated_input_idx_is_invalid():
    inputs = [{"idx": 3, "args": PICKLED}, {"idx": 3, "args": PICKLED}]
    assert "same idx" in _fails(
        "CallCreate", {"call_id": CALL, "function_id": FN, "inputs": inputs}
    )
    assert "same idx" in _fails("CallPutInputs", {"call_id": CALL, "inputs": inputs})


def _example_apps() -> Iterator[Any]:
    for path in sorted(EXAMPLES_DIR.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_schemas_example_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # examples only define their apps at import
        yield from (v for v in vars(module).values() if isinstance(v, ketch.App))


def test_the_specs_and_images_of_every_example_app_pass():
    secrets = [{"name": "creds", "id": "st-0123456789abcdef0123"}, {"sealed": b"\x01sealed"}]
    volumes = [{"path": "/data", "object_id": "vo-0123456789abcdef0123", "name": "data"}]
    apps = [app, *_example_apps()]
    wires = [fn._ketch_impl._spec.to_wire() for a in apps for fn in a.registered_functions.values()]
    assert len(wires) > 20
    for wire in wires:  # as _attach_secrets / _attach_volumes complete them before AppCreate
        wire.update(secrets=secrets, volumes=volumes, source={"blob_id": "bl-1", "hash": "ab" * 32})
    schemas.validate(
        "AppCreate",
        {"app_id": APP, "name": "e", "deployed": True, "functions": wires, "source_hash": ""},
    )
    for image in [w["image"] for w in wires if w["image"]]:
        schemas.validate("ImageBuild", {"image": image, "force": "marked"})


@pytest.mark.parametrize(
    ("field", "bad", "path"),
    [
        ("tag", 5, "$.functions[0].tag"),
        ("timeout", math.nan, "$.functions[0].timeout"),
        ("max_containers", 2**64 - 1, "$.functions[0].max_containers"),
        ("cpu", [1.0, 2.0, 3.0], "$.functions[0].cpu"),
        ("methods", [], "$.functions[0].methods"),
        ("module_file", b"/abs/path.py", "$.functions[0].module_file"),
        (
            "image",
            {"version": 1, "layers": [{"hash": "h", "kind": "k", "spec": {}, "blob": 10**9}]},
            "$.functions[0].image.layers[0].blob",
        ),
        (
            "image",
            {
                "version": 1,
                "layers": [],
                "mounts": [{"kind": "dir", "local_path": ["/"], "remote_path": "/h"}],
            },
            "$.functions[0].image.mounts[0].local_path",
        ),
    ],
)
def test_a_bad_function_spec_names_its_field(field: str, bad: Any, path: str):
    body = {"app_id": APP, "name": "", "functions": [{**SPEC, field: bad}]}
    assert f"`{path}`" in _fails("AppCreate", body)


def test_the_wire_schemas_name_every_field_the_sdk_sends():
    """A field added to FunctionSpec or Image.to_wire() needs its type here too."""
    assert set(schemas.FunctionWire.__struct_fields__) == {
        f.name for f in dataclasses.fields(FunctionSpec)
    }
    assert set(schemas.ImageWire.__struct_fields__) == set(IMAGE)
    assert set(schemas.ImageLayer.__struct_fields__) == set(IMAGE["layers"][0])
    assert set(schemas.ImageMount.__struct_fields__) == set(IMAGE["mounts"][0])
