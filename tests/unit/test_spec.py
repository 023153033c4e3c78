"""Decorator option validation: every bad option is an InvalidError at decoration time."""

from __future__ import annotations

import re

import pytest

import ketch
from ketch._spec import build_options, parse_gpu
from ketch.exception import InvalidError

app = ketch.App("spec-tests")


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 0},
        {"timeout": -5},
        {"timeout": 86401},
        {"timeout": "10"},
        {"retries": -1},
        {"retries": 11},
        {"retries": "3"},
        {"gpu": "NOT-A-GPU"},
        {"gpu": "H100:9"},
        {"gpu": []},
        {"min_containers": 3, "max_containers": 2},
        {"max_containers": 0},
        {"buffer_containers": -1},
        {"scaledown_window": 0},
        {"memory": -1},
        {"memory": (2048, 1024)},
        {"cpu": "lots"},
        {"env": {"A": 1}},
    ],
)
def test_bad_options_fail_at_decoration(options):
    with pytest.raises(InvalidError):

        @app.function(**options)
        def f():
            pass


def test_unknown_option_is_named():
    with pytest.raises(InvalidError, match="no_such_option"):
        app.function(no_such_option=1)


def test_good_options_are_normalized():
    opts = build_options(
        timeout=10, retries=ketch.Retries(max_retries=2, initial_delay=0.5), memory=(512, 1024)
    )
    assert opts["timeout"] == 10.0
    assert opts["max_retries"] == 2 and opts["initial_delay"] == 0.5
    assert opts["memory"] == [512, 1024]


def test_gpu_forms():
    assert parse_gpu("h100") == [{"type": "H100", "count": 1}]
    assert parse_gpu("A100-80GB:2") == [{"type": "A100-80GB", "count": 2}]
    assert parse_gpu(["H100", "any"]) == [{"type": "H100", "count": 1}, {"type": "ANY", "count": 1}]
    assert parse_gpu(None) == []


def test_retries_backoff():
    r = ketch.Retries(max_retries=5, backoff_coefficient=2.0, initial_delay=1.0, max_delay=5.0)
    assert [r.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_concurrent_and_batched_validate_and_order():
    with pytest.raises(InvalidError):
        ketch.concurrent(max_inputs=0)
    with pytest.raises(InvalidError):
        ketch.batched(max_batch_size=0, wait_ms=10)

    @app.function(serialized=True)
    def g(x):
        return x

    with pytest.raises(InvalidError, match="below"):
        ketch.concurrent(max_inputs=2)(g)


def test_nested_function_needs_serialized():
    def outer():
        @app.function()
        def inner():
            pass

    with pytest.raises(InvalidError, match="module level"):
        outer()


def test_class_parameters_are_checked_at_the_client():
    @app.cls(serialized=True)
    class Model:
        size: int = ketch.parameter(default=1)
        name: str = ketch.parameter()

        @ketch.method()
        def run(self):
            return self.size

    with pytest.raises(InvalidError, match="no parameter"):
        Model(name="a", colour="red")
    with pytest.raises(InvalidError, match="needs a value"):
        Model(size=2)
    with pytest.raises(InvalidError, match="keyword"):
        Model(3)
    assert Model(name="a").run.local() == 1


@pytest.mark.parametrize(
    "options",
    [
        {"secrets": "not-a-list"},
        {"volumes": ["/data"]},
        {"volumes": {"data": object()}},
        {"volumes": {"/": object()}},
    ],
)
def test_later_options_are_shape_checked_now(options):
    with pytest.raises(InvalidError):
        app.function(**options)


def test_image_option_takes_an_image():
    with pytest.raises(InvalidError, match="ketch.Image"):
        app.function(image="python:3.11")

    @app.function(image=ketch.Image.debian_slim().pip_install("numpy"), serialized=True)
    def uses_image():
        pass

    assert uses_image._ketch_impl._spec.image["layers"][-1]["kind"] == "pip_install"


def test_the_largest_options_are_accepted():
    @app.function(
        timeout=86400,
        retries=ketch.Retries(max_retries=2, initial_delay=0.1),
        gpu="H100",
        serialized=True,
    )
    def biggest():
        pass


# Cron and Period check themselves when made; schedule= checks the rest when decorating.
BAD_SCHEDULES = {
    "cron-fields": (lambda: ketch.Cron("not a cron"), "5 fields"),
    "cron-range": (lambda: ketch.Cron("61 * * * *"), "not a valid cron expression"),
    "cron-timezone": (
        lambda: ketch.Cron("* * * * *", timezone="Mars/Olympus"),
        "unknown timezone",
    ),
    "period-zero": (lambda: ketch.Period(seconds=0), "at least 1 second"),
    "not-a-schedule": (lambda: "daily", "ketch.Cron(...) or ketch.Period(...)"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCHEDULES))
def test_bad_schedules_are_clear_errors(case):
    make, message = BAD_SCHEDULES[case]
    with pytest.raises(InvalidError, match=re.escape(message)):

        @app.function(schedule=make(), serialized=True)
        def tick():
            pass


def test_a_scheduled_function_must_take_no_arguments():
    with pytest.raises(InvalidError, match="must take no required arguments"):

        @app.function(schedule=ketch.Period(hours=1), serialized=True)
        def tick(x):
            pass


def test_every_ketch_error_shares_one_base():
    for name in (
        "Error",
        "InvalidError",
        "NotFoundError",
        "FunctionTimeoutError",
        "RemoteError",
        "ExecutionError",
    ):
        assert issubclass(getattr(ketch.exception, name), ketch.exception.Error)
    # Raised inside a cancelled input: user code's `except Exception` must not swallow it.
    assert issubclass(ketch.exception.InputCancellation, BaseException)
    assert not issubclass(ketch.exception.InputCancellation, Exception)


def test_overrides_are_checked_as_decorator_options():
    """``with_options`` fields come from any client: each is checked like the decorator's."""
    from ketch._spec import FunctionSpec, apply_overrides, option_fields

    base = FunctionSpec(tag="f", module_name="m", qualname="f", env={"A": "1"})
    fields = option_fields(gpu="a10g:2", retries=2, cpu=(1, 2), env={"B": "2"}, timeout=30)
    spec = apply_overrides(base, fields)
    assert spec.gpu == [{"type": "A10G", "count": 2}] and spec.cpu == [1.0, 2.0]
    assert spec.env == {"A": "1", "B": "2"} and spec.max_retries == 2 and spec.timeout == 30
    assert base.env == {"A": "1"} and base.gpu == []  # the base is untouched
    for bad in (
        {"image": {}},  # not an option
        {"serialized_fn": b"x"},
        {"gpu": [{"type": "NOPE", "count": 1}]},
        {"gpu": ["A10G"]},
        {"timeout": 10**9},
        {"max_inputs": 4, "batch_max_size": 2},
        {"min_containers": 3, "max_containers": 1},
        {"secrets": [{"value": "clear text"}]},
        {"volumes": [{"path": "/proc/x", "object_id": "vo-1"}]},
        {"volumes": [{"path": "/a/../etc", "object_id": "vo-1"}]},
        "not a map",
    ):
        with pytest.raises(InvalidError):
            apply_overrides(base, bad)


def test_modal_only_options_are_renamed_accepted_or_refused_with_a_reason():
    """Older Modal names map to ketch's; platform hints are accepted; what ketch cannot do
    is refused saying why; a misspelt option is still an error."""
    legacy = ketch.App("legacy-options")

    @legacy.function(
        keep_warm=1,
        concurrency_limit=3,
        container_idle_timeout=10,
        allow_concurrent_inputs=5,
        enable_memory_snapshot=True,
        nonpreemptible=True,
        _experimental_scheduler_placement=None,
        serialized=True,
    )
    def f(x):
        return x

    spec = f._ketch_impl._spec
    assert (spec.min_containers, spec.max_containers) == (1, 3)
    assert (spec.scaledown_window, spec.max_inputs) == (10.0, 5)
    with pytest.warns(UserWarning, match="region= is ignored"):
        legacy.function(region="us-east")
    single = legacy.function(single_use_containers=True, serialized=True)(lambda: None)
    assert single._ketch_impl._spec.container_max_inputs == 1
    for refused in ({"max_inputs": 0}, {"proxy": "p"}, {"network_file_systems": {"/x": 1}}):
        with pytest.raises(InvalidError, match="not supported|do not exist|not in ketch|between"):
            legacy.function(**refused)
    with pytest.raises(InvalidError, match="unknown option"):
        legacy.cls(scaledown_windw=3)
