"""The Queue table: items of a state directory made by an older ketch are moved over."""

from __future__ import annotations

from ketch.server import queues
from ketch.server.store import Store


def test_items_of_the_older_table_move_over_in_order(tmp_path):
    store = Store(tmp_path / "state.db")
    try:
        db = store.db
        db.execute(
            "CREATE TABLE queue_items (seq INTEGER PRIMARY KEY AUTOINCREMENT, object_id TEXT, "
            "partition TEXT, data BLOB)"
        )
        db.executemany(
            "INSERT INTO queue_items (seq, object_id, partition, data) VALUES (?, ?, ?, ?)",
            [(5, "qu-a", "", b"first"), (9, "qu-a", "", b"second"), (12, "qu-b", "p", b"other")],
        )
        store._commit()
        queues._ready(store)
        assert queues._take(store, "qu-a", "", 10) == [b"first", b"second"]
        assert queues._take(store, "qu-b", "p", 10) == [b"other"]
        assert (
            db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'queue_items'").fetchone()[
                0
            ]
            == 0
        )
        assert list(queues._next_seqs(store, 2)) == [13, 14]  # never below a seq once used
    finally:
        store.close()


def test_seqs_continue_after_a_restart(tmp_path):
    store = Store(tmp_path / "state.db")
    queues._ready(store)
    seqs = queues._next_seqs(store, 3)
    store.db.executemany(queues._INSERT, [("qu-c", "", s, b"x") for s in seqs])
    store._commit()
    store.close()
    again = Store(tmp_path / "state.db")
    try:
        queues._ready(again)
        assert list(queues._next_seqs(again, 1)) == [4]
    finally:
        again.close()


def test_inputs_go_to_postgresql_in_copys_text_format():
    """The PostgreSQL enqueue path writes COPY's text format itself: bytea as escaped hex,
    NULL as \\N, and nothing that is not an id where an id goes."""
    import pytest

    from ketch.server.store import _copy_text_inputs

    data = _copy_text_inputs([("fc-a1", 0, b"\x00\t\n\\", None), ("fc-a1", 1, None, "bl-2")])
    assert data == b"fc-a1\t0\t\\\\x00090a5c\t\\N\tpending\t0\nfc-a1\t1\t\\N\tbl-2\tpending\t0\n"
    with pytest.raises(ValueError, match="not an id"):
        _copy_text_inputs([("fc-1\tx", 0, None, None)])
    with pytest.raises(ValueError, match="not an id"):
        _copy_text_inputs([("fc-1", 0, None, "bl\\n")])
