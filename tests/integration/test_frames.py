"""RPC frames on the control plane's port: the protocol the clients speak, and its errors."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import msgpack
import pytest
from ketch_testing import frame as _frame
from ketch_testing import read_frame as _read

import ketch
from ketch import _sync
from ketch._wire import RPC_MAGIC

pytestmark = pytest.mark.timeout(60)


def _connect(url: str, token: str | None = None) -> socket.socket:
    """A frame connection to ``url``, authenticated with ``token`` (default: the owner's)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    if token is None:
        token = (Path(os.environ["KETCH_HOME"]) / "token").read_text().strip()
    sock.sendall(RPC_MAGIC + _frame({"auth": token}))
    return sock


def _call(sock: socket.socket, method: str, body: object) -> dict:
    sock.sendall(_frame({"m": method, "b": body}))
    return _read(sock)


def test_errors_are_typed_and_the_connection_stays_usable(control_plane):
    with _connect(control_plane.url) as sock:
        reply = _call(sock, "NoSuchThing", {})
        assert reply["s"] == 404 and reply["r"]["error"]["type"] == "NotFoundError"
        reply = _call(sock, "DictGet", {"object_id": "di-missing", "key": b"k"})
        assert reply["s"] == 404 and "di-missing" in reply["r"]["error"]["message"]
        reply = _call(sock, "DictGet", ["not", "a", "map"])
        assert reply["s"] == 400 and reply["r"]["error"]["type"] == "InvalidError"
        sock.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")  # not msgpack
        reply = _read(sock)
        assert reply["s"] == 400 and "malformed request frame" in reply["r"]["error"]["message"]
        assert _call(sock, "Status", {})["s"] == 200


def test_an_oversized_frame_is_refused_and_the_connection_closed(control_plane):
    with _connect(control_plane.url) as sock:
        sock.sendall(struct.pack(">I", 0xFFFFFFF0))
        reply = _read(sock)
        assert reply["s"] == 413 and "over the limit" in reply["r"]["error"]["message"]
        assert sock.recv(1) == b""


def test_requests_split_across_writes_and_sent_together(control_plane):
    with _connect(control_plane.url) as sock:
        oid = _call(
            sock, "ObjectGet", {"kind": "dict", "name": "frames-split", "create_if_missing": True}
        )["r"]["object_id"]
        put = _frame({"m": "DictPut", "b": {"object_id": oid, "items": [[b"k", b"v"]]}})
        for i in range(0, len(put), 3):  # a byte or three at a time
            sock.sendall(put[i : i + 3])
            time.sleep(0.001)
        assert _read(sock)["r"] == {"written": 1}
        get = _frame({"m": "DictGet", "b": {"object_id": oid, "key": b"k"}})
        sock.sendall(get * 3)  # three requests in one write: three replies, in order
        assert [_read(sock)["r"]["value"] for _ in range(3)] == [b"v", b"v", b"v"]


def test_a_long_poll_waits_then_later_requests_are_answered_in_order(control_plane):
    with _connect(control_plane.url) as waiter, _connect(control_plane.url) as putter:
        oid = _call(
            waiter, "ObjectGet", {"kind": "queue", "name": "frames-poll", "create_if_missing": True}
        )["r"]["object_id"]
        # A blocking get, then a Status queued behind it on the same connection.
        waiter.sendall(
            _frame({"m": "QueueGet", "b": {"object_id": oid, "wait": 20}})
            + _frame({"m": "Status", "b": {}})
        )
        time.sleep(0.3)
        assert _call(putter, "QueuePut", {"object_id": oid, "items": [b"x"]})["s"] == 200
        first = _read(waiter)
        assert first["r"] == {"items": [b"x"]}
        assert "version" in _read(waiter)["r"]


def test_a_client_leaving_mid_poll_does_not_disturb_the_server(control_plane):
    sock = _connect(control_plane.url)
    oid = _call(
        sock, "ObjectGet", {"kind": "queue", "name": "frames-leave", "create_if_missing": True}
    )["r"]["object_id"]
    sock.sendall(_frame({"m": "QueueGet", "b": {"object_id": oid, "wait": 30}}))
    time.sleep(0.2)
    sock.close()
    q = ketch.Queue.from_name("frames-leave")
    q.put(1)
    assert q.get(timeout=5) == 1  # the item went to a live getter, not the one that left


def test_http_rpc_still_answers_beside_frames(control_plane):
    import urllib.request

    req = urllib.request.Request(
        f"{control_plane.url}/rpc/Status",
        data=msgpack.packb({}),
        method="POST",
        headers=control_plane.headers,
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert "version" in msgpack.unpackb(resp.read())


def test_blocking_calls_block_only_when_alone_on_their_loop(control_plane):
    seen: list[bool] = []

    async def probe() -> None:
        seen.append(_sync.blocking_allowed())

    async def two() -> None:
        import asyncio

        await asyncio.gather(probe(), probe())

    _sync.run_sync(probe())
    _sync.run_sync(two())
    _sync.run_sync(probe(), background=True)
    assert seen == [True, False, False, False]


def test_blocking_clients_on_many_threads(control_plane):
    d = ketch.Dict.from_name("frames-threads", create_if_missing=True)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                d[f"{n}-{i}"] = i
                assert d[f"{n}-{i}"] == i
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and d.len() == 400
