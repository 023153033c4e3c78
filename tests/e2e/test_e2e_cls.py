"""Classes: parameters, @enter/@exit, methods, one container per parameter set."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cls_run(ketch_env):
    workdir = tempfile.mkdtemp(prefix="ketch-e2e-cls-", dir="/tmp")
    try:
        run = ketch_env.run_example("cls_example.py", "--workdir", workdir, timeout=100)
        run.proc.check()
        run.workdir = Path(workdir)
        run.wait_until = ketch_env.wait_until
        yield run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_parameter_and_enter(cls_run):
    one = cls_run.value("one_a")
    assert one["start"] == 1 and one["value"] == 11, one


def test_same_parameters_reuse_container_and_state(cls_run):
    a, b = cls_run.value("one_a"), cls_run.value("one_b")
    assert a["pid"] == b["pid"], (a, b)
    assert b["calls"] == 2 and b["value"] == 12, b


def test_different_parameters_get_separate_containers(cls_run):
    one, two = cls_run.value("one_a"), cls_run.value("two")
    assert two["start"] == 2 and two["value"] == 21, two
    assert one["pid"] != two["pid"], "start=1 and start=2 shared a container"


def test_parameter_default(cls_run):
    default = cls_run.value("default")
    assert default["start"] == 0 and default["value"] == 5, default


def test_second_method(cls_run):
    assert cls_run.value("second_method") == 16


def test_method_map(cls_run):
    values = [r["value"] for r in cls_run.value("map")]
    assert values == [41, 42, 43]


def test_method_spawn(cls_run):
    assert cls_run.value("spawn") == 47


def test_method_local(cls_run):
    local = cls_run.value("local")
    assert local["value"] == 51, local


def test_exit_hook_runs_when_container_stops(cls_run):
    marker = cls_run.workdir / "exit-marker.txt"
    assert cls_run.wait_until(marker.exists, 15), "@ketch.exit() did not run after the app stopped"
    assert marker.read_text() == "exited start=3"


def test_enter_output_is_streamed(cls_run):
    assert "container for start=1 is ready" in cls_run.proc.output, cls_run.proc.describe()


def test_failing_enter_raises_instead_of_hanging(cls_run):
    value = cls_run.value("broken_enter")
    assert "raised" in value, value
    assert "setup failed on purpose" in value["message"], value


def test_required_parameter(cls_run):
    assert cls_run.value("required_parameter") == "hello ada"


def test_missing_required_parameter_raises(cls_run):
    value = cls_run.value("missing_parameter")
    assert value.get("raised") in ("TypeError", "InvalidError"), value
