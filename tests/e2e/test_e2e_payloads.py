"""Arguments and results bigger than the inline limit (they go through blobs)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def payload_run(ketch_env):
    run = ketch_env.run_example("payloads.py", "--mb", "20", timeout=100)
    run.proc.check()
    return run


@pytest.mark.parametrize("step", ["big_argument", "big_result", "map_of_medium", "small_after_big"])
def test_payload_round_trip(payload_run, step):
    assert payload_run.value(step) is True
