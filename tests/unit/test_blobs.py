"""A node's blob cache stays under its size: least recently used first, never a blob a
read-only Volume copy links to."""

from __future__ import annotations

import os

from ketch.server.blobs import BlobStore


def test_sweep_drops_the_oldest_unlinked_blobs_until_under_the_limit(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    ids = [store.put(bytes([i]) * 1000) for i in range(4)]  # 1,000 bytes each
    for age, blob_id in zip((400, 300, 200, 100), ids, strict=True):  # ids[0] the oldest
        t = 1_700_000_000 - age
        os.utime(store.path(blob_id), (t, t))
    os.link(store.path(ids[0]), tmp_path / "in-a-read-only-copy")  # in use: stays
    store.touch([ids[1]])  # just used: the newest now
    removed, freed = store.sweep(2_500)
    assert (removed, freed) == (2, 2000)
    left = {b for b in ids if store.exists(b)}
    assert left == {ids[0], ids[1]}, left
    assert store.sweep(10_000) == (0, 0)  # under the limit: nothing goes
