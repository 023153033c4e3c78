"""Bad input leaves nothing behind: a refused request writes nothing, not even part of itself."""

from __future__ import annotations

import msgpack
import pytest
from ketch_testing import post_raw

pytestmark = pytest.mark.timeout(60)


def _post(control_plane, method: str, body: dict) -> tuple[int, dict]:
    return post_raw(f"{control_plane.url}/rpc/{method}", msgpack.packb(body), control_plane.headers)


def test_a_dict_put_with_one_oversized_entry_writes_none(control_plane):
    status, made = _post(control_plane, "ObjectEphemeral", {"kind": "dict"})
    assert status == 200, made
    oid = made["object_id"]
    items = [[b"small", b"1"], [b"huge", b"x" * (65 << 20)]]
    status, reply = _post(control_plane, "DictPut", {"object_id": oid, "items": items})
    assert status == 413 and reply["error"]["type"] == "PayloadTooLargeError", reply
    # A later put commits; the refused put's first entry must not ride along with it.
    assert (
        _post(control_plane, "DictPut", {"object_id": oid, "items": [[b"other", b"2"]]})[0] == 200
    )
    status, got = _post(control_plane, "DictGet", {"object_id": oid, "key": b"small"})
    assert status == 200 and got["found"] is False, got
