"""Log lines in the store: filters (``ketch app logs``), the cursor past skipped lines,
and retention."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from ketch.server.logs import LogBook
from ketch.server.store import LogFilter, Store


def _rows(now: float, app: str) -> list[dict]:
    base = {"app_id": app, "container_id": "ta-1", "stream": "stdout"}
    return [
        {**base, "tag": "alpha", "text": "Alpha 50% done\n", "ts": now - 7200, "call_id": "fc-a"},
        {**base, "tag": "beta", "text": "beta started\n", "ts": now - 60, "call_id": "fc-b"},
        {**base, "tag": "alpha", "text": "alpha_2 done\n", "ts": now - 30, "call_id": "fc-c"},
        {**base, "tag": "beta", "text": "other app\n", "ts": now, "app_id": app + "x"},
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_filters_the_cursor_and_retention(tmp_path, backend):
    if backend == "postgres" and not os.environ.get("KETCH_TEST_POSTGRES"):
        pytest.skip("the PostgreSQL pass sets KETCH_TEST_POSTGRES")
    store = Store(
        tmp_path / "state.db" if backend == "sqlite" else os.environ["KETCH_TEST_POSTGRES"]
    )
    try:
        now, app = time.time(), f"ap-{uuid.uuid4().hex[:12]}"  # (a PostgreSQL store is shared)
        store.add_logs(_rows(now, app))
        book = LogBook(store)

        def texts(**kw):
            rows, _ = asyncio.run(book.read(app, 0, 0, 100, LogFilter(**kw)))
            return [r["text"].strip() for r in rows]

        assert texts() == ["Alpha 50% done", "beta started", "alpha_2 done"]
        assert texts(tag="beta") == ["beta started"]
        assert texts(call_id="fc-c") == ["alpha_2 done"]
        assert texts(since=now - 3600) == ["beta started", "alpha_2 done"]
        assert texts(until=now - 3600) == ["Alpha 50% done"]
        assert texts(search="ALPHA") == ["Alpha 50% done", "alpha_2 done"]
        assert texts(search="50%") == ["Alpha 50% done"]  # % and _ are literal
        assert texts(search="a_2") == ["alpha_2 done"]
        assert texts(search="a_2", tag="beta") == []
        # Lines the filters skip still move the cursor, so a follower does not rescan them.
        rows, cursor = asyncio.run(book.read(app, 0, 0, 100, LogFilter(tag="none")))
        assert rows == [] and cursor == store.last_log_seq(app) > 0
        assert book.prune(1 / 24) >= 1  # older than an hour: the first line
        assert texts() == ["beta started", "alpha_2 done"]
    finally:
        store.close()


def test_finished_calls_past_retention_go_with_their_inputs_and_outputs(tmp_path):
    """``call_retention_days``: a finished call older than the cut goes, arguments and
    results with it; a call with an input still pending stays whatever its age."""
    store = Store(tmp_path / "state.db")
    try:
        for call_id in ("fc-done", "fc-open"):
            call = {
                "id": call_id,
                "function_id": "fu-1",
                "app_id": "ap-1",
                "kind": "single",
                "params": None,
                "method": None,
                "n_inputs": 1,
                "spec_hash": "abc",
            }
            store.add_call(call, [{"idx": 0, "args": b"x", "blob_id": None}])
        done = store.call_inputs("fc-done", 10)
        assert done and done[0]["args"] == b"x"
        ids = [r[0] for r in store.db.execute("SELECT id FROM inputs WHERE call_id = 'fc-done'")]
        row = {"call_id": "fc-done", "idx": 0, "status": "success", "data": b"r", "detail": None}
        store.record_outputs([row], ids)
        assert store.call_inputs("fc-done", 10)[0]["args"] == b"x"  # kept for replay
        assert store.prune_calls(time.time() + 1) == 1
        assert store.get_call("fc-done") is None and store.call_inputs("fc-done", 10) == []
        assert store.call_results("fc-done", 10) == []
        assert store.get_call("fc-open") is not None
    finally:
        store.close()
