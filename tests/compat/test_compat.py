"""Modal apps, written as Modal's users write them (``import modal``), run through the real
CLI: one file per part of Modal's API under ``apps/``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

APPS = Path(__file__).parent / "apps"


def _run(ketch_env, name: str, timeout: float = 150):
    done = ketch_env.cli("run", APPS / name, cwd=APPS, timeout=timeout)
    assert done.returncode == 0, done.describe()
    return done


def test_with_options_concurrency_and_batching(ketch_env):
    """``Function.with_options`` and ``Cls.with_options`` run in containers of their own with
    the options applied; ``with_concurrency`` and ``with_batching`` stack on them;
    ``@modal.batched`` on a class method without ``@modal.method`` takes real batches."""
    out = _run(ketch_env, "with_options.py").stdout
    for line in (
        "FN_VARIANT big 1 True small",
        "FN_VARIANT_MAP [0, 1, 2]",
        "CLS_VARIANT small big True a",
        "CONCURRENCY True",
        "BATCHED [0, 1, 2] True",
        "SINGLE {'x': 7, 'batch': 1}",
        "WITH_BATCHING True 6",
        "BAD_GPU True",
    ):
        assert line in out, out


def test_update_autoscaler_and_variants_of_a_deployed_function(ketch_env):
    """``update_autoscaler(min_containers=1)`` on a deployed function warms a container now;
    a ``with_options`` variant takes its base's new code and options when the app is
    deployed again, keeping its own, and the deploy puts the decorator's scaling back."""
    ketch_env.cli("deploy", APPS / "autoscaled.py", cwd=APPS).check()
    client = APPS / "autoscaled_client.py"
    first = ketch_env.python(client, "scale", cwd=APPS, timeout=120)
    assert first.returncode == 0, first.describe()
    assert "WARM 1" in first.stdout and "BAD True" in first.stdout, first.describe()
    assert "CALL hello ann | hello bob !" in first.stdout, first.describe()
    ketch_env.cli("deploy", APPS / "autoscaled.py", cwd=APPS, extra_env={"GREETING": "hi"}).check()
    again = ketch_env.python(client, "call", cwd=APPS, timeout=120)
    assert "CALL hi ann | hi bob !" in again.stdout, again.describe()
