"""Every RPC method fuzzed over HTTP: bad input is a typed 4xx, never a 5xx or SQL text.

Bodies are drawn per method from its request schema (``server/schemas``):
well-typed values inside and at the edge of each bound, values of every
other msgpack type (huge and negative ints, nan and inf, nested maps),
missing fields and non-map bodies. Real object ids and names are mixed in so
that bodies get past the lookups into the handlers' own logic.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import urllib.error
import urllib.request
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError, StatementError

import ketch
from ketch.server import api, schemas

pytestmark = pytest.mark.timeout(120)

SQL_WORDS = ("SELECT", "INSERT", "UPDATE ", "DELETE FROM", "sqlite", "[SQL")
I64 = 2**63
LONG_WAITS = {"wait", "timeout"}  # long polls: a valid value stays short, so no example blocks
EXAMPLES_PER_METHOD = 100
# Fuzzed last: they change (stop, replace, delete) what the other methods look up.
LAST = {"AppCreate", "AppRollback", "AppStop", "ObjectDelete"}
# Specs the fuzzer deploys start no container: their inputs park (as in the fixture's own app).
FORCED = {"min_containers": [0], "buffer_containers": [0], "max_containers": [0]}
NAMES = ["fuzz-dict", "fuzz-queue", "fuzz-volume", "fuzz-secret", "fuzz-app", "", "-bad", "x" * 65]

# -- strategies -------------------------------------------------------------------------

# msgpack carries ints from -2**63 to 2**64 - 1, no more.
_edge_ints = st.sampled_from([0, 1, -1, I64 - 1, I64, -I64, 2**64 - 1, -(2**53)])
_ints = st.one_of(_edge_ints, st.integers(min_value=-I64, max_value=2**64 - 1))
_floats = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]), st.floats())
_scalars = st.one_of(
    st.none(), st.booleans(), _ints, _floats, st.text(max_size=20), st.binary(max_size=20)
)
_junk = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | _ints, inner, max_size=4)
    ),
    max_leaves=12,
)
_non_maps = st.one_of(_scalars, st.lists(_junk, max_size=4))


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each as often as its weight (``one_of`` is not uniform)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


def _well_typed(
    t: msgspec.inspect.Type, name: str, plausible: dict[str, list[Any]]
) -> st.SearchStrategy[Any]:
    """Values of type ``t`` inside its bounds (and on them), mostly real ids and names where there are some."""
    if name in FORCED:
        return st.sampled_from(FORCED[name])
    base = _from_type(t, name, plausible)
    return (
        _weighted((3, st.sampled_from(plausible[name])), (1, base)) if name in plausible else base
    )


def _from_type(
    t: msgspec.inspect.Type, name: str, plausible: dict[str, list[Any]]
) -> st.SearchStrategy[Any]:
    scalar = _scalar_from_type(t, name)
    if scalar is not None:
        return scalar
    return _nested_from_type(t, name, plausible)


def _scalar_from_type(t: msgspec.inspect.Type, name: str) -> st.SearchStrategy[Any] | None:
    """Values of a scalar type ``t`` within its bounds, or None when ``t`` holds other values."""
    mi = msgspec.inspect
    if isinstance(t, mi.IntType):
        low, high = t.ge if t.ge is not None else -I64, t.le if t.le is not None else I64 - 1
        return st.one_of(st.sampled_from([low, high]), st.integers(low, min(high, low + 10_000)))
    if isinstance(t, mi.FloatType):
        high = 0.05 if name in LONG_WAITS else (t.le if t.le is not None else 1e6)
        return st.floats(t.ge if t.ge is not None else -1e6, high)
    if isinstance(t, mi.StrType):
        return st.text(max_size=min(t.max_length or 30, 30))
    if isinstance(t, mi.BytesType):
        return st.binary(max_size=30)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    return None


def _nested_from_type(
    t: msgspec.inspect.Type, name: str, plausible: dict[str, list[Any]]
) -> st.SearchStrategy[Any]:
    """Values of a union, container or struct type ``t``, or junk for ``Any``."""
    mi = msgspec.inspect
    if isinstance(t, mi.UnionType):
        return st.one_of([_from_type(u, name, plausible) for u in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(_well_typed(t.item_type, name, plausible), max_size=3)
    if isinstance(t, mi.TupleType):
        return st.tuples(*(_from_type(u, name, plausible) for u in t.item_types)).map(list)
    if isinstance(t, mi.DictType):
        return st.dictionaries(
            _from_type(t.key_type, "", {}), _from_type(t.value_type, "", {}), max_size=3
        )
    if isinstance(t, mi.StructType):
        return _bodies(t, plausible, junk=False)
    return _junk  # Any: the handler checks these itself


def _bodies(
    t: msgspec.inspect.StructType, plausible: dict[str, list[Any]], junk: bool
) -> st.SearchStrategy[Any]:
    """Maps with the schema's field names: required ones mostly present, each value well typed or junk."""

    def value(field: msgspec.inspect.Field) -> st.SearchStrategy[Any]:
        typed = _well_typed(field.type, field.name, plausible)
        return _weighted((2, typed), (1, _junk)) if junk else typed

    required = {f.name: value(f) for f in t.fields if f.required}
    optional = {f.name: value(f) for f in t.fields if not f.required}
    present = st.fixed_dictionaries(required, optional=optional)
    anything = st.fixed_dictionaries({}, optional={**required, **optional, "unknown_field": _junk})
    return _weighted((3, present), (1, anything)) if junk else present


def _requests(method: str, plausible: dict[str, list[Any]]) -> st.SearchStrategy[Any]:
    """Well-typed bodies (which reach the handlers), bodies with junk and missing fields, non-maps."""
    t = msgspec.inspect.type_info(schemas.SCHEMAS[method])
    assert isinstance(t, msgspec.inspect.StructType)
    return _weighted(
        (5, _bodies(t, plausible, junk=False)),
        (4, _bodies(t, plausible, junk=True)),
        (1, _non_maps),
    )


# -- the server side ------------------------------------------------------------------


def _post(control_plane: Any, method: str, data: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{control_plane.url}/rpc/{method}", data=data, headers=control_plane.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, msgpack.unpackb(resp.read(), strict_map_key=False)
    except urllib.error.HTTPError as err:
        return err.code, msgpack.unpackb(err.read(), strict_map_key=False)


def _rpc(control_plane: Any, method: str, body: dict[str, Any]) -> dict[str, Any]:
    status, reply = _post(control_plane, method, msgpack.packb(body))
    assert status == 200, (method, status, reply)
    return reply  # type: ignore[no-any-return]


def _check_reply(method: str, body: Any, status: int, reply: Any) -> None:
    assert status < 500, (method, body, status, reply)
    assert status != 401, f"the owner's token was refused: {reply}"
    if status == 200:
        return
    assert isinstance(reply, dict) and set(reply) == {"error"}, reply
    error = reply["error"]
    assert isinstance(error, dict) and set(error) == {"type", "message"}, reply
    assert isinstance(error["type"], str) and isinstance(error["message"], str)
    sent = repr(body).lower()
    leaked = [
        w for w in SQL_WORDS if w.lower() in error["message"].lower() and w.lower() not in sent
    ]
    assert not leaked, (method, body, error)


@pytest.fixture(scope="module")
def plausible(control_plane: Any) -> dict[str, list[Any]]:
    """Real ids and names for the fields that look things up."""
    ids = {
        kind: _rpc(
            control_plane,
            "ObjectGet",
            {"kind": kind, "name": f"fuzz-{kind}", "create_if_missing": True},
        )["object_id"]
        for kind in ("dict", "queue", "volume")
    }
    _rpc(control_plane, "SecretCreate", {"name": "fuzz-secret", "env": {"A": "1"}})
    # max_containers=0 parks every input: calls exist and take inputs, and no container starts.
    parked = {
        "tag": "parked",
        "module_name": "fuzz_module",
        "qualname": "parked",
        "max_containers": 0,
    }
    app = _rpc(
        control_plane, "AppCreate", {"app_id": "ap-fuzz", "name": "fuzz-app", "functions": [parked]}
    )
    function_id = app["function_ids"]["parked"]
    call = {"call_id": "fc-fuzz", "function_id": function_id, "inputs": [{"idx": 0, "args": b"x"}]}
    _rpc(control_plane, "CallCreate", call)
    return {
        **{f"object_id:{kind}": [object_id] for kind, object_id in ids.items()},
        "object_id": [*ids.values(), "di-missing"],
        "app_id": [app["app_id"], "ap-missing"],
        "function_id": [function_id],
        "call_id": ["fc-fuzz", "fc-missing"],
        "name": NAMES,
        "app_name": NAMES,
        "partition": [None, "p", "x" * 65],
        "role": ["invoke", "deploy", "admin", "owner"],
        "env": [{"A": "1", "B": None}, {"1BAD": "x"}, {"A": "\0"}],
        "path": ["/", "a/b", "../up", "a\0b", ""],
        "dst_path": ["/", "c", "../up"],
    }


def test_every_method_is_fuzzed():
    assert set(schemas.SCHEMAS) == set(api._HANDLERS)


@pytest.mark.parametrize("method", sorted(schemas.SCHEMAS, key=lambda m: (m in LAST, m)))
def test_fuzzed_requests_get_typed_4xx_replies(
    control_plane: Any, plausible: dict[str, list[Any]], method: str
):
    kind = next((k for k in ("dict", "queue", "volume") if method.lower().startswith(k)), None)
    if kind is not None:  # mostly the id of an object of the method's own kind
        plausible = {
            **plausible,
            "object_id": [*plausible[f"object_id:{kind}"] * 3, *plausible["object_id"]],
        }

    @settings(
        max_examples=EXAMPLES_PER_METHOD,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    @given(body=_requests(method, plausible))
    def fuzz(body: Any) -> None:
        status, reply = _post(control_plane, method, msgpack.packb(body))
        _check_reply(method, body, status, reply)

    fuzz()


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x81\xa1a", b"\xdc\xff\xff", b"\x92\x01"])
def test_malformed_msgpack_is_a_typed_400(control_plane: Any, data: bytes):
    status, reply = _post(control_plane, "DictGet", data)
    assert status == 400 and reply["error"]["type"] == "InvalidError"


def test_the_control_plane_still_works_after_fuzzing(control_plane: Any):
    """Runs after the fuzz tests above (file order): the server answers and its data is intact."""
    assert _rpc(control_plane, "Status", {})["runtime"] == "local"
    dict_id = _rpc(control_plane, "ObjectEphemeral", {"kind": "dict"})["object_id"]
    _rpc(control_plane, "DictPut", {"object_id": dict_id, "items": [[b"k", b"v"]]})
    assert _rpc(control_plane, "DictGet", {"object_id": dict_id, "key": b"k"}) == {
        "found": True,
        "value": b"v",
    }
    with ketch.Dict.ephemeral() as d:
        d["answer"] = 42
        assert d["answer"] == 42


# -- the last line of defence: errors no schema caught ------------------------------------


def test_a_value_sqlite_cannot_take_is_a_400_without_sql():
    wrapped = IntegrityError(
        "INSERT INTO objects (id) VALUES (?)", ("x",), sqlite3.IntegrityError("NOT NULL")
    )
    for exc in (
        OverflowError("Python int too large to convert to SQLite INTEGER"),
        wrapped,
        StatementError("bad parameter", "SELECT 1", {}, ValueError()),
    ):
        status, reply = api.error_reply(exc, "DictPut")
        assert status == 400 and reply["error"]["type"] == "InvalidError"
        assert not any(w.lower() in reply["error"]["message"].lower() for w in SQL_WORDS)


def test_an_internal_error_is_logged_not_sent(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.ERROR, logger="ketch.server.api"):
        status, reply = api.error_reply(RuntimeError("SELECT secret FROM internals"), "AppList")
    assert status == 500
    assert reply == {
        "error": {
            "type": "ServerError",
            "message": "internal error in AppList (see the control plane's log)",
        }
    }
    assert "SELECT secret" in caplog.text  # the traceback stays in the server log
