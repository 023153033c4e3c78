"""@ketch.concurrent, @ketch.batched and max_containers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def concurrency_run(ketch_env):
    run = ketch_env.run_example("concurrency.py", timeout=100)
    run.proc.check()
    return run


def test_concurrent_inputs_share_one_container(concurrency_run):
    # Each of the 8 inputs returns its pid only once all 8 are running at the same time.
    pids = concurrency_run.value("concurrent_map")
    assert None not in pids, f"the 8 inputs never ran at once: {pids}"
    assert len(set(pids)) == 1, f"max_containers=1 but pids were {pids}"


def test_batched_map(concurrency_run):
    results = concurrency_run.value("batched_map")
    assert [r["x"] for r in results] == list(range(8))
    assert [r["doubled"] for r in results] == [2 * x for x in range(8)]
    sizes = [r["batch_size"] for r in results]
    assert max(sizes) > 1, f"inputs were never batched: {sizes}"
    assert max(sizes) <= 4, f"max_batch_size=4 exceeded: {sizes}"


def test_batched_single_call(concurrency_run):
    result = concurrency_run.value("batched_remote")
    assert result["x"] == 5 and result["doubled"] == 10, result


def test_max_containers_one_serializes(concurrency_run):
    runs = concurrency_run.value("max_containers_1")
    assert len({run["pid"] for run in runs}) == 1, runs
    assert [run["alongside"] for run in runs] == [0] * 4, f"inputs overlapped: {runs}"
