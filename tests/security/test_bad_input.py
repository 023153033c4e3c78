"""Bad input leaves nothing behind: a refused request writes nothing, not even part of itself."""

from __future__ import annotations

import urllib.error
import urllib.request

import msgpack
import pytest

pytestmark = pytest.mark.timeout(60)


def _post(control_plane, method: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{control_plane.url}/rpc/{method}", data=msgpack.packb(body), method="POST", headers=control_plane.headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, msgpack.unpackb(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, msgpack.unpackb(err.read())


def test_a_dict_put_with_one_oversized_entry_writes_none(control_plane):
    status, made = _post(control_plane, "ObjectEphemeral", {"kind": "dict"})
    assert status == 200, made
    oid = made["object_id"]
    items = [[b"small", b"1"], [b"huge", b"x" * (65 << 20)]]
    status, reply = _post(control_plane, "DictPut", {"object_id": oid, "items": items})
    assert status == 413 and reply["error"]["type"] == "PayloadTooLargeError", reply
    # A later put commits; the refused put's first entry must not ride along with it.
    assert _post(control_plane, "DictPut", {"object_id": oid, "items": [[b"other", b"2"]]})[0] == 200
    status, got = _post(control_plane, "DictGet", {"object_id": oid, "key": b"small"})
    assert status == 200 and got["found"] is False, got
