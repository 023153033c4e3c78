"""Remote exceptions, timeouts, retries, crashing containers and bad input."""

from __future__ import annotations

import shutil
import tempfile

import pytest

pytestmark = pytest.mark.e2e

# --- remote exceptions -----------------------------------------------------------


@pytest.fixture(scope="module")
def errors_run(ketch_env):
    run = ketch_env.run_example("errors.py::main", timeout=90)
    run.proc.check()
    return run


def test_remote_exception_same_type(errors_run):
    value = errors_run.value("value_error")
    assert value["type"] == "ValueError" and not value.get("unexpected"), value
    assert value["message"] == "bad value 42"


def test_remote_traceback_includes_remote_source_line(errors_run):
    tb = errors_run.value("value_error")["traceback"]
    assert "REMOTE-RAISE-LINE" in tb, f"remote frame missing from the traceback:\n{tb}"
    assert "raise_value_error" in tb, tb


def test_custom_exception_class(errors_run):
    value = errors_run.value("custom_error")
    assert value["type"] == "CustomError" and not value.get("unexpected"), value
    assert value["message"] == "custom failure"


def test_builtin_key_error(errors_run):
    value = errors_run.value("key_error")
    assert value["type"] == "KeyError" and not value.get("unexpected"), value
    assert "missing-key" in value["message"]


def test_unpicklable_exception_becomes_ketch_error(errors_run):
    value = errors_run.value("unpicklable_error")
    assert value["is_ketch_error"] and not value.get("unexpected"), value
    assert "cannot pickle me" in value["message"] or "UnpicklableError" in value["message"], value


def test_exception_from_map(errors_run):
    value = errors_run.value("map_error")
    assert value["type"] == "ValueError" and value["message"] == "bad value 7", value


def test_exception_from_spawned_call(errors_run):
    value = errors_run.value("spawn_error")
    assert value["type"] == "ValueError" and value["message"] == "bad value 8", value


def test_uncaught_remote_exception_fails_run_with_remote_traceback(ketch_env):
    proc = ketch_env.cli("run", "examples/errors.py::uncaught", timeout=90)
    assert proc.returncode not in (0, None), proc.describe()
    assert "ValueError" in proc.output and "bad value 13" in proc.output, proc.describe()
    # Leave out the container's own log of the error (lines like "[raise_value_error] ..."):
    # the re-raised exception's traceback must show the remote line itself.
    local_lines = [
        line
        for line in proc.output.splitlines()
        if "REMOTE-RAISE-LINE" in line and "raise_value_error]" not in line
    ]
    assert local_lines, proc.describe()


# --- timeouts, retries, crashes --------------------------------------------------


@pytest.fixture(scope="module")
def failures_run(ketch_env):
    workdir = tempfile.mkdtemp(prefix="ketch-e2e-fail-", dir="/tmp")
    try:
        run = ketch_env.run_example("failures.py", "--workdir", workdir, timeout=110)
        run.proc.check()
        yield run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_function_timeout(failures_run):
    value = failures_run.value("timeout")
    # too_slow sleeps 60 s under timeout=2: only the timeout can end it before the run's own.
    assert value.get("raised") == "FunctionTimeoutError", value


def test_retries_policy_succeeds_on_third_attempt(failures_run):
    value = failures_run.value("retries_succeed")
    assert value.get("returned") == 3, value
    assert failures_run.value("attempts")["flaky"] == 3


def test_int_retries(failures_run):
    value = failures_run.value("retries_int")
    assert value.get("returned") == 3, value
    assert failures_run.value("attempts")["int"] == 3


def test_retries_exhausted_raises_last_error(failures_run):
    value = failures_run.value("retries_exhausted")
    assert value.get("raised") == "RuntimeError", value
    assert "attempt 2 failed" in value["message"], value
    assert failures_run.value("attempts")["often"] == 2


def _assert_crash(value):
    assert "raised" in value, f"a crashed container returned {value}"
    assert value["is_ketch_error"], f"crash raised a non-ketch error: {value}"
    message = value["message"].lower()
    assert "exit" in message or "crash" in message or "killed" in message, value


def test_container_crash_os_exit(failures_run):
    _assert_crash(failures_run.value("crash_exit"))


def test_container_crash_sigkill(failures_run):
    _assert_crash(failures_run.value("crash_sigkill"))


def test_app_still_works_after_crash(failures_run):
    assert failures_run.value("after_crash").get("returned") == "still fine"


def test_crash_is_retried(failures_run):
    value = failures_run.value("crash_retried")
    assert value.get("returned") == 2, value


def test_timeout_is_retried(failures_run):
    value = failures_run.value("timeout_retried")
    assert value.get("returned") == 2, value


# --- bad input ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_input_run(ketch_env):
    workdir = tempfile.mkdtemp(prefix="ketch-e2e-bad-", dir="/tmp")
    try:
        run = ketch_env.run_example("bad_input.py", "--workdir", workdir, timeout=90)
        run.proc.check()
        yield run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    "step", ["too_many_args", "too_few_args", "unknown_kwarg", "spawn_bad_args"]
)
def test_wrong_arguments_raise_type_error(bad_input_run, step):
    value = bad_input_run.value(step)
    assert value.get("is_type_error"), value


@pytest.mark.parametrize("step", ["unpicklable_lock", "unpicklable_generator"])
def test_unpicklable_argument(bad_input_run, step):
    value = bad_input_run.value(step)
    assert value.get("is_ketch_error"), value


def test_bad_calls_never_reach_a_container(bad_input_run):
    assert bad_input_run.value("good_call") == {"returned": "recorded"}
    assert bad_input_run.value("calls_recorded") == ["'ok'"]
