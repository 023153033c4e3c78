"""The HTTP API and the SDK against an in-process control plane."""

from __future__ import annotations

import urllib.error
import urllib.request

import msgpack
import pytest

import ketch
from ketch import _serialization
from ketch.exception import InvalidError, NotFoundError

app = ketch.App("api-tests")


@app.function()
def size_of(data: bytes) -> int:
    return len(data)


@app.function()
def make_bytes(n: int) -> bytes:
    return b"k" * n


@app.function()
def add(a: int, b: int = 1) -> int:
    return a + b


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, msgpack.unpackb(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, msgpack.unpackb(err.read())


def test_malformed_body_is_a_typed_400(control_plane):
    status, reply = _post(
        f"{control_plane.url}/rpc/CallCreate", b"\xc1 not msgpack", control_plane.headers
    )
    assert status == 400
    assert reply["error"]["type"] == "InvalidError"


def test_missing_field_is_a_typed_400(control_plane):
    status, reply = _post(
        f"{control_plane.url}/rpc/CallCreate",
        msgpack.packb({"call_id": "fc-x"}),
        control_plane.headers,
    )
    assert status == 400 and reply["error"]["type"] == "InvalidError"


def test_unknown_method_is_404(control_plane):
    status, reply = _post(
        f"{control_plane.url}/rpc/NoSuchThing", msgpack.packb({}), control_plane.headers
    )
    assert status == 404 and reply["error"]["type"] == "NotFoundError"


def test_unknown_call_id(control_plane):
    with pytest.raises(NotFoundError):
        ketch.FunctionCall.from_id("fc-doesnotexist").get(timeout=1)


def test_calling_without_a_running_app_is_invalid(control_plane):
    with pytest.raises(InvalidError, match="not running"):
        add.remote(1)


def test_missing_deployed_app(control_plane):
    with pytest.raises(NotFoundError, match="no deployed app"):
        ketch.Function.from_name("no-such-app", "f").remote()


def test_large_payloads_go_through_the_blob_store(control_plane):
    big = b"x" * (3 * 1024 * 1024)
    with app.run(show_logs=False):
        assert size_of.remote(big) == len(big)
        assert make_bytes.remote(5 * 1024 * 1024) == b"k" * (5 * 1024 * 1024)
        assert add.remote(2, b=5) == 7
    blobs = list((control_plane.home / "blobs").rglob("*"))
    assert any(p.is_file() for p in blobs)


def test_oversized_payload_is_refused_at_the_client(control_plane, monkeypatch):
    monkeypatch.setattr(_serialization, "MAX_PAYLOAD_BYTES", 1024)
    with app.run(show_logs=False):
        with pytest.raises(_serialization.PayloadTooLargeError):
            size_of.remote(b"y" * 4096)


def test_wrong_arguments_fail_before_sending(control_plane):
    with app.run(show_logs=False):
        with pytest.raises(TypeError, match="add"):
            add.remote(1, 2, 3)
        with pytest.raises(TypeError):
            add.remote(c=1)
