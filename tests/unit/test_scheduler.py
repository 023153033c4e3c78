"""Unit tests for the I/O-free scheduler state machine (``ketch.server.scheduler.Pool``).

Every test builds a pool with deterministic container ids ("c1", "c2", ...),
feeds events with explicit ``now`` values and asserts the exact actions.
Nothing sleeps and nothing touches the network.
"""

from __future__ import annotations

import itertools

import pytest

from ketch.retries import Retries
from ketch.server.scheduler import (
    DEFAULT_STARTUP_S,
    FAST_FUNCTION_S,
    MAX_START_FAILURES,
    PREFETCH_INPUTS,
    TRUSTED_AFTER,
    Assign,
    CancelOnContainer,
    Complete,
    Fail,
    Pool,
    PoolPolicy,
    Retry,
    StartContainer,
    StopContainer,
)

FAST = FAST_FUNCTION_S / 2  # a duration that marks the function as fast
SLOW = 0.5  # a duration that does not


def make_pool(*, keep_warm: bool = True, room=None, **policy) -> Pool:
    counter = itertools.count(1)
    kwargs = {} if room is None else {"room": room}
    return Pool(
        "fn",
        PoolPolicy(**policy),
        new_container_id=lambda: f"c{next(counter)}",
        keep_warm=keep_warm,
        **kwargs,
    )


def starts(*ids: str) -> list[StartContainer]:
    return [StartContainer(cid) for cid in ids]


def running_one(pool: Pool, input_id: int = 1, *, now: float = 0.0) -> None:
    """Scale from zero and run ``input_id`` on c1 (asserting every step)."""
    assert pool.enqueue([input_id], now) == starts("c1")
    assert pool.container_ready("c1", now + 1) == [Assign("c1", (input_id,))]


def make_fast(pool: Pool, *, now: float = 0.0) -> None:
    """One ready container c1, idle, whose function measured as fast (< FAST_FUNCTION_S)
    over enough inputs (``TRUSTED_AFTER``) for the pool to act on it."""
    running_one(pool, 1, now=now)
    # The output comes FAST after the assignment, as it would for a fast function.
    assert pool.container_outputs("c1", [(1, "success", FAST)], now + 1 + FAST) == [Complete(1)]
    for n in range(1, TRUSTED_AFTER):  # (ids no test uses)
        at = now + 1 + n * 2 * FAST
        assert pool.enqueue([10_000 + n], at) == [Assign("c1", (10_000 + n,))]
        done = pool.container_outputs("c1", [(10_000 + n, "success", FAST)], at + FAST)
        assert done == [Complete(10_000 + n)]
    assert pool.ewma_duration is not None and pool.ewma_duration < FAST_FUNCTION_S
    assert pool.n_durations == TRUSTED_AFTER


# -- policy ------------------------------------------------------------------------
def test_policy_slots_and_target():
    assert PoolPolicy().slots == 1
    assert PoolPolicy(max_inputs=4).slots == 4
    assert PoolPolicy(max_inputs=2, batch_size=8).slots == 8
    assert PoolPolicy(max_inputs=0).slots == 1
    assert PoolPolicy(max_inputs=4).target == 4
    assert PoolPolicy(max_inputs=4, target_inputs=2).target == 2
    assert PoolPolicy(target_inputs=0).target == 1


# -- scale from zero -----------------------------------------------------------------
def test_new_pool_is_idle_and_tick_does_nothing():
    pool = make_pool()
    assert pool.is_idle()
    assert pool.tick(0.0) == []
    assert pool.tick(1000.0) == []
    assert pool.is_idle()


def test_scale_from_zero_start_then_assign_then_complete():
    pool = make_pool()
    assert pool.enqueue([1], 0.0) == [StartContainer("c1")]
    assert pool.containers["c1"].status == "starting"
    # No second start while the first one is still starting.
    assert pool.tick(0.5) == []
    assert pool.enqueue([], 0.6) == []
    assert pool.container_ready("c1", 2.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "success", 0.3)], 3.0) == [Complete(1)]
    assert pool.inflight() == 0
    assert not pool.is_idle()  # c1 is still up, kept for the scale-down window


def test_container_ready_measures_startup_time():
    pool = make_pool()
    assert pool.enqueue([1], 10.0) == starts("c1")
    assert pool.container_ready("c1", 16.0) == [Assign("c1", (1,))]
    assert pool.ewma_startup == pytest.approx(0.8 * DEFAULT_STARTUP_S + 0.2 * 6.0)


def test_container_ready_for_unknown_or_already_ready_container_is_ignored():
    pool = make_pool()
    running_one(pool)
    assert pool.enqueue([2], 2.0) == starts("c2")
    assert pool.container_ready("nope", 3.0) == []
    # A duplicate ready does not dispatch input 2 onto the busy c1.
    assert pool.container_ready("c1", 3.0) == []
    assert list(pool.pending) == [2]


# -- slow / unknown-duration functions: one input per slot ---------------------------
def test_unknown_duration_one_input_per_container():
    pool = make_pool()
    assert pool.enqueue([1, 2, 3], 0.0) == starts("c1", "c2", "c3")
    # The first ready container takes only one input, leaving the rest for c2 and c3.
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_ready("c2", 1.1) == [Assign("c2", (2,))]
    assert pool.container_ready("c3", 1.2) == [Assign("c3", (3,))]
    assert pool.tick(2.0) == []


def test_slow_function_next_input_only_after_output():
    pool = make_pool(max_containers=1)
    assert pool.enqueue([1, 2, 3], 0.0) == starts("c1")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.tick(2.0) == []
    assert pool.container_outputs("c1", [(1, "success", 5.0)], 6.0) == [
        Complete(1),
        Assign("c1", (2,)),
    ]
    assert pool.container_outputs("c1", [(2, "success", 5.0)], 11.0) == [
        Complete(2),
        Assign("c1", (3,)),
    ]
    assert pool.container_outputs("c1", [(3, "success", 5.0)], 16.0) == [Complete(3)]


def test_duration_at_fast_threshold_is_not_fast():
    pool = make_pool(max_containers=1)
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "success", FAST_FUNCTION_S)], 2.0) == [Complete(1)]
    assert pool.enqueue([2, 3, 4], 3.0) == [Assign("c1", (2,))]


# -- fast functions: prefetch window -----------------------------------------------
def test_fast_function_gets_many_inputs_in_one_assign():
    pool = make_pool(max_containers=1)
    make_fast(pool)
    assert pool.enqueue(range(2, 12), 3.0) == [Assign("c1", tuple(range(2, 12)))]
    assert not pool.pending


def test_prefetch_window_is_capped():
    pool = make_pool()
    make_fast(pool)
    ids = list(range(2, 2 + PREFETCH_INPUTS + 10))
    # 10 left over drain in ~10 * FAST s, far below a start: no new container.
    assert pool.enqueue(ids, 3.0) == [Assign("c1", tuple(ids[:PREFETCH_INPUTS]))]
    assert list(pool.pending) == ids[PREFETCH_INPUTS:]
    # Finishing two inputs tops the window up by two.
    done = [(ids[0], "success", FAST), (ids[1], "success", FAST)]
    assert pool.container_outputs("c1", done, 3.0 + 2 * FAST) == [
        Complete(ids[0]),
        Complete(ids[1]),
        Assign("c1", tuple(ids[PREFETCH_INPUTS : PREFETCH_INPUTS + 2])),
    ]


def test_function_that_turns_slow_gets_no_more_prefetch():
    pool = make_pool(max_containers=1)
    make_fast(pool)
    assert pool.enqueue([2, 3], 3.0) == [Assign("c1", (2, 3))]
    # One very slow output pushes the average over the threshold: back to one at a time,
    # and c1 (still holding input 3) gets nothing more.
    assert pool.container_outputs("c1", [(2, "success", 10.0)], 13.0) == [Complete(2)]
    assert pool.enqueue([4, 5], 14.0) == []
    assert pool.container_outputs("c1", [(3, "success", 10.0)], 24.0) == [
        Complete(3),
        Assign("c1", (4,)),
    ]


def _two_fast_ready_containers() -> Pool:
    pool = make_pool(max_containers=2)
    assert pool.enqueue([1, 2], 0.0) == starts("c1", "c2")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_ready("c2", 1.0) == [Assign("c2", (2,))]
    assert pool.container_outputs("c1", [(1, "success", FAST)], 2.0) == [Complete(1)]
    assert pool.container_outputs("c2", [(2, "success", FAST)], 2.0) == [Complete(2)]
    _trust(pool, FAST)
    return pool


def _trust(pool: Pool, duration: float) -> None:
    """As if ``TRUSTED_AFTER`` inputs of ``duration`` had been measured (the pool acts on
    its average only then)."""
    while pool.n_durations < TRUSTED_AFTER:
        pool.ewma_duration = duration
        pool.n_durations += 1


def test_prefetch_spreads_queue_over_ready_containers():
    pool = _two_fast_ready_containers()
    assert pool.enqueue([3, 4], 3.0) == [Assign("c1", (3,)), Assign("c2", (4,))]


def test_prefetch_gives_each_container_one_assign_per_dispatch():
    pool = _two_fast_ready_containers()
    # share = ceil(10 queued / 2 ready) = 5, computed once: one Assign each, not 5 + 3 + 1 + 1.
    actions = pool.enqueue(range(3, 13), 3.0)
    assert actions == [Assign("c1", (3, 4, 5, 6, 7)), Assign("c2", (8, 9, 10, 11, 12))]
    assert not pool.pending


def test_prefetch_share_is_capped_by_each_containers_free_window():
    pool = _two_fast_ready_containers()
    n = PREFETCH_INPUTS - 2
    first = list(range(3, 3 + 2 * n))
    assert pool.enqueue(first, 3.0) == [
        Assign("c1", tuple(first[:n])),
        Assign("c2", tuple(first[n:])),
    ]
    done = [(i, "success", FAST) for i in first[n:]]
    assert pool.container_outputs("c2", done, 3.1) == [Complete(i) for i in first[n:]]
    # share = ceil(10 / 2) = 5: the empty c2 (least loaded, served first) takes 5, c1 only
    # has 2 free places left in its window, and the other 3 wait; still one Assign each.
    more = list(range(1000, 1010))
    assert pool.enqueue(more, 3.2) == [
        Assign("c2", tuple(more[:5])),
        Assign("c1", tuple(more[5:7])),
    ]
    assert list(pool.pending) == more[7:]


# -- limits: max_containers and room() ------------------------------------------------
def test_max_containers_never_exceeded():
    pool = make_pool(max_containers=3)
    assert pool.enqueue(range(1, 11), 0.0) == starts("c1", "c2", "c3")
    assert pool.enqueue([11, 12], 0.5) == []
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    # A crash frees a place: exactly one replacement.
    assert pool.container_exited("c1", 2.0, "killed") == [Fail(1, "killed"), StartContainer("c4")]
    assert pool.tick(3.0) == []
    assert len(pool._live()) == 3
    assert pool.desired() == 3


def test_room_limits_starts():
    # room() is the shell's free capacity; here: `capacity` containers in all.
    capacity = [2]
    pool = make_pool(room=lambda: capacity[0] - len(pool.containers))
    assert pool.enqueue(range(1, 6), 0.0) == starts("c1", "c2")
    assert pool.tick(1.0) == []
    assert pool.enqueue([6], 1.5) == []
    capacity[0] = 5
    assert pool.tick(2.0) == starts("c3", "c4", "c5")
    capacity[0] = 100
    assert pool.tick(3.0) == starts("c6")


# -- min_containers and buffer_containers --------------------------------------------
def test_min_containers_kept_warm():
    pool = make_pool(min_containers=2, scaledown_window=10.0)
    assert pool.tick(0.0) == starts("c1", "c2")
    assert pool.container_ready("c1", 1.0) == []
    assert pool.container_ready("c2", 1.0) == []
    assert pool.tick(1000.0) == []
    # A warm container that dies is replaced.
    assert pool.container_exited("c1", 1001.0, "oom") == starts("c3")


def test_min_containers_ignored_without_keep_warm():
    pool = make_pool(min_containers=2, keep_warm=False, scaledown_window=10.0)
    assert pool.tick(0.0) == []
    running_one(pool, now=1.0)
    assert pool.container_outputs("c1", [(1, "success", 0.5)], 3.0) == [Complete(1)]
    assert pool.tick(13.0) == [StopContainer("c1")]


def test_scale_down_keeps_min_and_stops_longest_idle_first():
    pool = make_pool(min_containers=1, scaledown_window=10.0)
    assert pool.enqueue([1, 2, 3], 0.0) == starts("c1", "c2", "c3")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_ready("c2", 1.0) == [Assign("c2", (2,))]
    assert pool.container_ready("c3", 1.0) == [Assign("c3", (3,))]
    assert pool.container_outputs("c3", [(3, "success", 1.0)], 2.0) == [Complete(3)]
    assert pool.container_outputs("c1", [(1, "success", 2.0)], 3.0) == [Complete(1)]
    assert pool.container_outputs("c2", [(2, "success", 3.0)], 4.0) == [Complete(2)]
    assert pool.tick(12.5) == [StopContainer("c3")]
    assert pool.tick(100.0) == [StopContainer("c1")]
    assert pool.tick(1000.0) == []
    assert pool.containers["c2"].status == "ready"


def test_buffer_containers_only_under_load():
    pool = make_pool(buffer_containers=2, scaledown_window=10.0)
    assert pool.tick(0.0) == []
    assert pool.enqueue([1], 0.0) == starts("c1", "c2", "c3")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_ready("c2", 1.5) == []
    assert pool.container_ready("c3", 1.6) == []
    # While input 1 runs, the two spare containers are wanted and stay.
    assert pool.tick(100.0) == []
    # Without load no buffer is wanted: the spares have been idle long enough; c1 not yet.
    assert pool.container_outputs("c1", [(1, "success", 99.0)], 100.0) == [
        Complete(1),
        StopContainer("c2"),
        StopContainer("c3"),
    ]
    assert pool.tick(109.9) == []
    assert pool.tick(110.0) == [StopContainer("c1")]


# -- scale down -----------------------------------------------------------------------
def test_scale_down_after_window_and_down_to_zero():
    pool = make_pool(scaledown_window=10.0)
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "success", 1.0)], 2.0) == [Complete(1)]
    assert pool.tick(11.999) == []
    assert pool.tick(12.0) == [StopContainer("c1")]
    assert pool.tick(13.0) == []  # not asked twice
    assert pool.container_exited("c1", 14.0, "stopped") == []
    assert pool.is_idle()
    # And back up from zero.
    assert pool.enqueue([2], 20.0) == starts("c2")


def test_new_work_resets_idle_timer():
    pool = make_pool(scaledown_window=10.0)
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "success", 1.0)], 2.0) == [Complete(1)]
    assert pool.enqueue([2], 8.0) == [Assign("c1", (2,))]
    assert pool.tick(12.0) == []  # busy
    assert pool.container_outputs("c1", [(2, "success", 1.0)], 9.0) == [Complete(2)]
    assert pool.tick(18.9) == []
    assert pool.tick(19.0) == [StopContainer("c1")]


def test_stopping_container_gets_no_work():
    pool = make_pool(scaledown_window=10.0)
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "success", 1.0)], 2.0) == [Complete(1)]
    assert pool.tick(12.0) == [StopContainer("c1")]
    assert pool.enqueue([2], 12.5) == starts("c2")
    assert pool.container_exited("c1", 13.0, "stopped") == []
    assert pool.container_ready("c2", 14.0) == [Assign("c2", (2,))]


def test_idle_ready_container_never_assigned_scales_down():
    pool = make_pool(scaledown_window=10.0)
    assert pool.enqueue([1], 0.0) == starts("c1")
    assert pool.cancel([1], 0.5) == []
    assert pool.container_ready("c1", 1.0) == []
    assert pool.tick(10.9) == []
    assert pool.tick(11.0) == [StopContainer("c1")]


# -- backlog rule ---------------------------------------------------------------------
def _measured(duration: float, *, ready_at: float = 1.0) -> Pool:
    """c1 ready (started at 0), one output of ``duration`` measured, idle."""
    pool = make_pool()
    assert pool.enqueue([1], 0.0) == starts("c1")
    assert pool.container_ready("c1", ready_at) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "success", duration)], ready_at + 1) == [Complete(1)]
    _trust(pool, duration)
    return pool


def test_backlog_rule_no_start_when_ready_containers_drain_faster():
    pool = _measured(0.01)  # slow enough for one at a time, fast enough to drain 9 in 0.09 s
    assert pool.enqueue(range(2, 12), 3.0) == [Assign("c1", (2,))]
    assert pool.container_outputs("c1", [(2, "success", 0.01)], 3.01) == [
        Complete(2),
        Assign("c1", (3,)),
    ]


def test_backlog_rule_starts_containers_when_queue_is_slower_than_a_start():
    pool = _measured(SLOW)  # 9 queued * 0.5 s = 4.5 s > 1 s startup
    assert pool.enqueue(range(2, 12), 3.0) == [Assign("c1", (2,))] + starts(
        *(f"c{i}" for i in range(2, 11))
    )


def test_backlog_rule_uses_measured_startup_time():
    # c1 took 20 s to start: ewma startup 0.8 * 1 + 0.2 * 20 = 4.8 s > 9 * 0.5 s.
    pool = _measured(SLOW, ready_at=20.0)
    assert pool.enqueue(range(2, 12), 22.0) == [Assign("c1", (2,))]


# -- retries ----------------------------------------------------------------------------
def test_failure_retried_with_backoff_then_final_failure_completes():
    retries = Retries(max_retries=2, backoff_coefficient=3.0, initial_delay=2.0)
    pool = make_pool(retries=retries)
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 2.0) == [
        Retry(1, attempt=1, delay=2.0)
    ]
    assert pool.tick(3.9) == []
    assert pool.tick(4.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 5.0) == [
        Retry(1, attempt=2, delay=6.0)
    ]
    assert pool.tick(10.9) == []
    assert pool.tick(11.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 12.0) == [Complete(1)]
    assert pool.failures == {}
    assert pool.tick(50.0) == []


def test_retry_delay_capped_at_max_delay():
    retries = Retries(max_retries=3, backoff_coefficient=10.0, initial_delay=5.0, max_delay=20.0)
    assert [retries.delay(n) for n in (1, 2, 3)] == [5.0, 20.0, 20.0]
    pool = make_pool(retries=retries)
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 2.0) == [Retry(1, 1, 5.0)]
    assert pool.tick(7.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 8.0) == [Retry(1, 2, 20.0)]


def test_zero_delay_retry_is_dispatched_in_the_same_event():
    pool = make_pool(retries=Retries(max_retries=1, initial_delay=0.0))
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 2.0) == [
        Retry(1, 1, 0.0),
        Assign("c1", (1,)),
    ]
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 3.0) == [Complete(1)]


def test_no_retries_failure_is_final():
    pool = make_pool()
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 2.0) == [Complete(1)]


def test_enqueue_carries_earlier_failures():
    pool = make_pool(retries=Retries(max_retries=2, initial_delay=1.0))
    assert pool.enqueue([1], 0.0, failures={1: 1}) == starts("c1")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 2.0) == [
        Retry(1, attempt=2, delay=2.0)
    ]
    assert pool.tick(4.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 5.0) == [Complete(1)]


def test_idle_container_is_kept_while_an_input_waits_for_its_retry():
    pool = make_pool(scaledown_window=1.0, retries=Retries(max_retries=1, initial_delay=5.0))
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 2.0) == [Retry(1, 1, 5.0)]
    # The input waiting out its backoff is in flight: c1, idle past its scale-down window,
    # is kept for it (and no second container is started).
    assert pool.inflight() == 1
    assert pool.tick(3.0) == []
    assert pool.tick(6.9) == []
    assert pool.tick(7.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "success", 0.5)], 8.0) == [Complete(1)]
    # Nothing in flight any more: now c1 goes after its window.
    assert pool.tick(8.9) == []
    assert pool.tick(9.0) == [StopContainer("c1")]


# -- container crash ------------------------------------------------------------------
def test_crash_fails_running_input_without_retries():
    pool = make_pool()
    running_one(pool)
    assert pool.container_exited("c1", 2.0, "exit code 137") == [Fail(1, "exit code 137")]
    assert pool.is_idle()


def test_preemption_requeues_running_inputs_without_counting_a_retry():
    """A node lost (issue 17): its inputs run again, even with retries=0, and a second
    loss of the same input still costs nothing."""
    pool = make_pool()
    running_one(pool)
    for n in (2, 3):
        assert pool.container_exited(f"c{n - 1}", float(n), "node lost", preempted=True) == starts(
            f"c{n}"
        )
        assert list(pool.pending) == [1]
        assert pool.container_ready(f"c{n}", n + 0.5) == [Assign(f"c{n}", (1,))]
    assert pool.start_failures == 0


def test_crash_retries_running_input():
    pool = make_pool(retries=Retries(max_retries=1, initial_delay=1.0))
    running_one(pool)
    # The input waiting for its retry is in flight: its replacement starts during the delay.
    assert pool.container_exited("c1", 2.0, "oom") == [
        Retry(1, attempt=1, delay=1.0),
        StartContainer("c2"),
    ]
    assert pool.tick(3.0) == []  # due, but c2 is still starting
    assert list(pool.pending) == [1]
    assert pool.container_ready("c2", 4.0) == [Assign("c2", (1,))]
    # The crash used up the only retry; nothing is left, so nothing is restarted.
    assert pool.container_exited("c2", 5.0, "oom") == [Fail(1, "oom")]
    assert pool.is_idle()


def test_crash_requeues_unstarted_inputs_at_front_without_counting_a_failure():
    pool = make_pool(
        batch_size=2, max_containers=1, retries=Retries(max_retries=1, initial_delay=1.0)
    )
    assert pool.enqueue(range(1, 7), 0.0) == starts("c1")
    # Batched: a window of two batches.
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1, 2, 3, 4))]
    # 1, 2 were running (the first `slots`); 3, 4 were only queued on c1.
    assert pool.container_exited("c1", 2.0, "segfault") == [
        Retry(1, 1, 1.0),
        Retry(2, 1, 1.0),
        StartContainer("c2"),
    ]
    assert list(pool.pending) == [3, 4, 5, 6]
    assert pool.container_ready("c2", 2.5) == [Assign("c2", (3, 4, 5, 6))]
    # Input 3 had no failure counted: its first failure is retry 1.
    assert pool.container_outputs("c2", [(3, "failure", 0.1)], 2.6) == [Retry(3, 1, 1.0)]


def test_crash_of_fast_container_requeues_prefetched_inputs():
    pool = make_pool(max_containers=1)
    make_fast(pool)
    assert pool.enqueue([2, 3, 4], 3.0) == [Assign("c1", (2, 3, 4))]
    assert pool.container_exited("c1", 4.0, "killed") == [Fail(2, "killed"), StartContainer("c2")]
    assert pool.container_ready("c2", 5.0) == [Assign("c2", (3, 4))]


def test_crash_with_concurrent_slots_fails_all_running():
    pool = make_pool(max_inputs=3, max_containers=1)
    assert pool.enqueue([1, 2, 3, 4], 0.0) == starts("c1")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1, 2, 3))]
    assert pool.container_exited("c1", 2.0, "oom") == [
        Fail(1, "oom"),
        Fail(2, "oom"),
        Fail(3, "oom"),
        StartContainer("c2"),
    ]
    assert pool.container_ready("c2", 3.0) == [Assign("c2", (4,))]


def test_exit_of_unknown_container_is_ignored():
    pool = make_pool()
    running_one(pool)
    assert pool.container_exited("nope", 2.0, "gone") == []
    assert pool.container_exited("c1", 3.0, "gone") == [Fail(1, "gone")]
    assert pool.container_exited("c1", 3.0, "gone") == []


def test_late_output_from_crashed_container_is_ignored():
    pool = make_pool(retries=Retries(max_retries=1, initial_delay=1.0))
    running_one(pool)
    assert pool.container_exited("c1", 2.0, "lost") == [Retry(1, 1, 1.0), StartContainer("c2")]
    assert pool.container_outputs("c1", [(1, "success", 1.0)], 2.5) == []
    # The input still runs again, on the replacement.
    assert pool.container_ready("c2", 3.0) == [Assign("c2", (1,))]


# -- init failure and start failures -----------------------------------------------------
def test_init_failure_fails_assigned_pending_and_delayed_inputs():
    pool = make_pool(max_containers=2, retries=Retries(max_retries=1, initial_delay=10.0))
    assert pool.enqueue([1, 2], 0.0) == starts("c1", "c2")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "failure", 0.1)], 1.5) == [
        Retry(1, 1, 10.0),
        Assign("c1", (2,)),
    ]
    assert pool.enqueue([3, 4], 1.6) == []
    assert pool.container_init_failed("c1", 2.0, "ImportError: no module named foo") == [
        Fail(2, "ImportError: no module named foo"),
        Fail(3, "ImportError: no module named foo"),
        Fail(4, "ImportError: no module named foo"),
        Fail(1, "ImportError: no module named foo"),
    ]
    assert pool.containers["c1"].status == "stopping"
    assert pool.tick(100.0) == []
    # Its exit is neither a start failure nor a crash of running inputs.
    assert pool.container_exited("c1", 101.0, "exit code 1") == []
    assert pool.start_failures == 0


def test_init_failure_of_a_starting_container():
    pool = make_pool(max_containers=1)
    assert pool.enqueue([1, 2, 3], 0.0) == starts("c1")
    assert pool.container_init_failed("c1", 1.0, "boom") == [
        Fail(1, "boom"),
        Fail(2, "boom"),
        Fail(3, "boom"),
    ]
    assert pool.container_ready("c1", 1.5) == []
    assert pool.container_exited("c1", 2.0, "exit code 1") == []
    assert pool.is_idle()


def test_init_failure_does_not_fail_cancelled_inputs():
    pool = make_pool(max_containers=1)
    assert pool.enqueue([1, 2], 0.0) == starts("c1")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.cancel([1], 1.5) == [CancelOnContainer("c1", (1,))]
    assert pool.container_init_failed("c1", 2.0, "boom") == [Fail(2, "boom")]
    assert pool.cancelled == set()
    assert not pool.pending
    # A late output for the cancelled input is not ours any more.
    assert pool.container_outputs("c1", [(1, "cancelled", 0.1)], 2.5) == []


def test_repeated_start_failures_fail_pending():
    assert MAX_START_FAILURES == 3
    pool = make_pool()
    assert pool.enqueue([1], 0.0) == starts("c1")
    assert pool.container_exited("c1", 1.0, "image pull failed") == starts("c2")
    assert pool.container_exited("c2", 2.0, "image pull failed") == starts("c3")
    assert pool.container_exited("c3", 3.0, "image pull failed") == [
        Fail(1, "image pull failed (container failed to start 3 times)")
    ]
    assert pool.is_idle()
    # The counter starts over for new work.
    assert pool.enqueue([2], 4.0) == starts("c4")
    assert pool.container_exited("c4", 5.0, "image pull failed") == starts("c5")


def test_start_failure_counter_resets_when_a_container_becomes_ready():
    pool = make_pool()
    assert pool.enqueue([1], 0.0) == starts("c1")
    assert pool.container_exited("c1", 1.0, "x") == starts("c2")
    assert pool.container_exited("c2", 2.0, "x") == starts("c3")
    assert pool.container_ready("c3", 3.0) == [Assign("c3", (1,))]
    assert pool.container_exited("c3", 4.0, "crash") == [Fail(1, "crash")]
    assert pool.enqueue([2], 5.0) == starts("c4")
    # Would be the third start failure in a row without the reset.
    assert pool.container_exited("c4", 6.0, "x") == starts("c5")


def test_repeated_start_failures_fail_pending_with_several_containers():
    pool = make_pool()
    assert pool.enqueue([1, 2], 0.0) == starts("c1", "c2")
    assert pool.container_exited("c1", 1.0, "image pull failed") == starts("c3")
    assert pool.container_exited("c2", 2.0, "image pull failed") == starts("c4")
    # The third start failure in a row fails the queue although c4 is still live.
    reason = "image pull failed (container failed to start 3 times)"
    assert pool.container_exited("c3", 3.0, "image pull failed") == [
        Fail(1, reason),
        Fail(2, reason),
    ]
    assert not pool.pending
    assert pool.containers["c4"].status == "starting"
    assert pool.start_failures == 0
    # c4 failing too is the first failure of a new run, with nothing left to fail or restart.
    assert pool.container_exited("c4", 4.0, "image pull failed") == []
    assert pool.is_idle()


def test_repeated_start_failures_also_fail_inputs_waiting_for_retry():
    pool = make_pool(retries=Retries(max_retries=1, initial_delay=50.0))
    running_one(pool)
    assert pool.container_exited("c1", 2.0, "oom") == [Retry(1, 1, 50.0), StartContainer("c2")]
    assert pool.container_exited("c2", 3.0, "image pull failed") == starts("c3")
    assert pool.container_exited("c3", 4.0, "image pull failed") == starts("c4")
    assert pool.container_exited("c4", 5.0, "image pull failed") == [
        Fail(1, "image pull failed (container failed to start 3 times)")
    ]
    assert not pool.delayed
    assert pool.tick(100.0) == []
    assert pool.is_idle()


# -- cancel ----------------------------------------------------------------------------
def test_cancel_pending_input():
    pool = make_pool(max_containers=1)
    assert pool.enqueue([1, 2, 3], 0.0) == starts("c1")
    assert pool.cancel([2], 0.5) == []
    assert list(pool.pending) == [1, 3]
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "success", 1.0)], 2.0) == [
        Complete(1),
        Assign("c1", (3,)),
    ]
    assert pool.container_outputs("c1", [(3, "success", 1.0)], 3.0) == [Complete(3)]


def test_cancel_assigned_input_and_swallow_its_output():
    pool = make_pool(max_containers=1)
    assert pool.enqueue([1, 2], 0.0) == starts("c1")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.cancel([1], 2.0) == [CancelOnContainer("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "cancelled", 1.0)], 2.5) == [Assign("c1", (2,))]
    assert pool.ewma_duration is None  # a cancelled run says nothing about durations
    assert pool.cancelled == set()


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_output_for_cancelled_input_is_swallowed_whatever_the_outcome(outcome):
    pool = make_pool(retries=Retries(max_retries=3))
    running_one(pool)
    assert pool.cancel([1], 2.0) == [CancelOnContainer("c1", (1,))]
    assert pool.container_outputs("c1", [(1, outcome, 1.0)], 2.5) == []
    assert pool.tick(50.0) == []


def test_cancel_across_containers_and_queue():
    pool = make_pool(max_containers=2)
    assert pool.enqueue([1, 2, 3], 0.0) == starts("c1", "c2")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_ready("c2", 1.0) == [Assign("c2", (2,))]
    assert pool.cancel([1, 2, 3, 99], 2.0) == [
        CancelOnContainer("c1", (1,)),
        CancelOnContainer("c2", (2,)),
    ]
    assert not pool.pending


def test_cancel_input_waiting_for_retry():
    pool = make_pool(retries=Retries(max_retries=1, initial_delay=5.0))
    running_one(pool)
    assert pool.container_outputs("c1", [(1, "failure", 0.5)], 2.0) == [Retry(1, 1, 5.0)]
    assert pool.cancel([1], 3.0) == []
    assert pool.tick(10.0) == []
    assert not pool.delayed


def test_cancel_prefetched_input_is_not_requeued_after_crash():
    pool = make_pool()
    make_fast(pool)
    assert pool.enqueue([2, 3, 4], 3.0) == [Assign("c1", (2, 3, 4))]
    assert pool.cancel([3], 3.5) == [CancelOnContainer("c1", (3,))]
    assert pool.container_exited("c1", 4.0, "killed") == [Fail(2, "killed"), StartContainer("c2")]
    assert list(pool.pending) == [4]
    assert pool.cancelled == set()


def test_cancel_running_input_then_crash_does_not_fail_it():
    pool = make_pool(retries=Retries(max_retries=2))
    running_one(pool)
    assert pool.cancel([1], 2.0) == [CancelOnContainer("c1", (1,))]
    assert pool.container_exited("c1", 2.5, "killed") == []
    assert pool.is_idle()


# -- retire ------------------------------------------------------------------------------
def test_retire_stops_idle_and_starting_containers_at_once():
    pool = make_pool(max_containers=2)
    assert pool.enqueue([1], 0.0) == starts("c1")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_outputs("c1", [(1, "success", 1.0)], 2.0) == [Complete(1)]
    assert pool.enqueue([2, 3], 3.0) == [Assign("c1", (2,)), StartContainer("c2")]
    assert pool.container_outputs("c1", [(2, "success", 1.0)], 4.0) == [
        Complete(2),
        Assign("c1", (3,)),
    ]
    assert pool.container_outputs("c1", [(3, "success", 1.0)], 5.0) == [Complete(3)]
    assert pool.retire(6.0) == [StopContainer("c1"), StopContainer("c2")]
    # A late ready from the retired starting container changes nothing.
    assert pool.container_ready("c2", 6.5) == []
    # New inputs go to new containers.
    assert pool.enqueue([4], 7.0) == starts("c3")
    assert pool.container_ready("c3", 8.0) == [Assign("c3", (4,))]


def test_draining_container_gets_no_new_inputs_and_stops_once_empty():
    room_left = [100]
    pool = make_pool(room=lambda: room_left[0])
    make_fast(pool)
    assert pool.enqueue([2, 3], 3.0) == [Assign("c1", (2, 3))]
    room_left[0] = 0  # keep starts out of the picture: this test is about dispatch
    assert pool.retire(4.0) == []
    assert pool.enqueue([4], 4.5) == []
    assert pool.container_outputs("c1", [(2, "success", FAST)], 5.0) == [Complete(2)]
    assert pool.container_outputs("c1", [(3, "success", FAST)], 6.0) == [
        Complete(3),
        StopContainer("c1"),
    ]
    assert list(pool.pending) == [4]
    room_left[0] = 100
    assert pool.container_exited("c1", 7.0, "stopped") == starts("c2")
    assert pool.container_ready("c2", 8.0) == [Assign("c2", (4,))]


def test_crash_of_draining_container_requeues_its_queued_inputs():
    room_left = [100]
    pool = make_pool(max_containers=1, room=lambda: room_left[0])
    make_fast(pool)
    assert pool.enqueue([2, 3, 4], 3.0) == [Assign("c1", (2, 3, 4))]
    room_left[0] = 0
    assert pool.retire(4.0) == []
    room_left[0] = 100
    assert pool.container_exited("c1", 5.0, "killed") == [Fail(2, "killed"), StartContainer("c2")]
    assert pool.container_ready("c2", 6.0) == [Assign("c2", (3, 4))]


def test_retire_does_not_start_containers_for_inputs_stuck_on_draining_ones():
    pool = make_pool(scaledown_window=10.0)
    running_one(pool)
    assert pool.retire(2.0) == []
    assert pool.inflight() == 0  # input 1 stays on the draining c1
    assert pool.enqueue([2], 3.0) == starts("c2")
    assert pool.container_outputs("c1", [(1, "success", 2.0)], 4.0) == [
        Complete(1),
        StopContainer("c1"),
    ]
    assert pool.container_ready("c2", 5.0) == [Assign("c2", (2,))]


# -- stop_all ---------------------------------------------------------------------------
def test_stop_all_stops_every_container_once_and_drops_queue():
    pool = make_pool(max_containers=3, retries=Retries(max_retries=1, initial_delay=50.0))
    assert pool.enqueue([1, 2, 3, 4], 0.0) == starts("c1", "c2", "c3")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.container_ready("c2", 1.0) == [Assign("c2", (2,))]
    assert pool.container_outputs("c2", [(2, "failure", 0.1)], 1.5) == [
        Retry(2, 1, 50.0),
        Assign("c2", (3,)),
    ]
    assert pool.stop_all() == [StopContainer("c1"), StopContainer("c2"), StopContainer("c3")]
    assert not pool.pending and not pool.delayed
    assert pool.stop_all() == []
    assert pool.container_ready("c3", 2.0) == []


def test_stop_all_then_exit_just_forgets_the_container():
    pool = make_pool()
    running_one(pool)
    assert pool.stop_all() == [StopContainer("c1")]
    assert pool.stopped
    # The shell owns the fate of inputs of a stopped app: no Fail from the pool.
    assert pool.container_exited("c1", 3.0, "app stopped") == []
    assert pool.containers == {}
    assert pool.tick(100.0) == []
    assert pool.is_idle()


def test_stop_all_drops_inputs_queued_on_containers():
    pool = make_pool()
    make_fast(pool)
    assert pool.enqueue([2, 3, 4], 3.0) == [Assign("c1", (2, 3, 4))]
    assert pool.stop_all() == [StopContainer("c1")]
    # Neither the running input 2 nor the prefetched 3 and 4 are failed, requeued or restarted.
    assert pool.container_exited("c1", 4.0, "app stopped") == []
    assert not pool.pending
    assert pool.tick(5.0) == []
    assert pool.is_idle()


def test_stop_all_does_not_retry_running_inputs():
    pool = make_pool(retries=Retries(max_retries=2, initial_delay=1.0))
    running_one(pool)
    assert pool.stop_all() == [StopContainer("c1")]
    assert pool.container_exited("c1", 3.0, "app stopped") == []
    assert not pool.delayed
    assert pool.tick(10.0) == []
    assert pool.is_idle()


def test_stop_all_ignores_later_enqueue_and_tick():
    pool = make_pool()
    running_one(pool)
    assert pool.stop_all() == [StopContainer("c1")]
    assert pool.enqueue([2, 3], 3.0) == []
    assert pool.tick(4.0) == []
    assert pool.container_exited("c1", 5.0, "app stopped") == []
    assert pool.enqueue([4], 6.0) == []
    assert pool.tick(100.0) == []
    assert pool.containers == {}


def test_stop_all_does_not_restart_warm_containers():
    pool = make_pool(min_containers=1)
    assert pool.tick(0.0) == starts("c1")
    assert pool.container_ready("c1", 1.0) == []
    assert pool.stop_all() == [StopContainer("c1")]
    assert pool.container_exited("c1", 2.0, "app stopped") == []
    assert pool.tick(3.0) == []


# -- concurrency and batching -----------------------------------------------------------
def test_concurrent_inputs_fill_slots():
    pool = make_pool(max_inputs=4)
    assert pool.enqueue(range(1, 11), 0.0) == starts("c1", "c2", "c3")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1, 2, 3, 4))]
    assert pool.container_ready("c2", 1.0) == [Assign("c2", (5, 6, 7, 8))]
    assert pool.container_ready("c3", 1.0) == [Assign("c3", (9, 10))]
    assert pool.container_outputs("c1", [(1, "success", 1.0)], 2.0) == [Complete(1)]
    # The least loaded container is filled first, each to its slots and no further.
    assert pool.enqueue([11, 12, 13], 2.5) == [Assign("c3", (11, 12)), Assign("c1", (13,))]
    assert {cid: len(c.assigned) for cid, c in pool.containers.items()} == {
        "c1": 4,
        "c2": 4,
        "c3": 4,
    }
    _trust(pool, 1.0)
    # All slots busy, one input queued: it drains in 1 s / 12 slots, no new container.
    assert pool.enqueue([14], 3.0) == []
    # A bigger backlog does scale: ceil((17 queued + 12 running) / 4) = 8 containers.
    assert pool.enqueue(range(15, 31), 3.1) == starts("c4", "c5", "c6", "c7", "c8")


def test_target_inputs_scales_out_before_slots_are_full():
    pool = make_pool(max_inputs=4, target_inputs=2)
    assert pool.enqueue([1, 2, 3, 4], 0.0) == starts("c1", "c2")
    assert pool.desired() == 2


def test_batched_window_is_two_batches_even_for_fast_functions():
    pool = make_pool(batch_size=3, max_containers=1)
    assert pool.enqueue(range(1, 11), 0.0) == starts("c1")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1, 2, 3, 4, 5, 6))]
    assert pool.inflight() == 4 + 3
    batch = [(i, "success", FAST) for i in (1, 2, 3)]
    assert pool.container_outputs("c1", batch, 2.0) == [
        Complete(1),
        Complete(2),
        Complete(3),
        Assign("c1", (7, 8, 9)),
    ]
    assert pool.enqueue(range(11, 20), 2.5) == []


# -- queries ---------------------------------------------------------------------------
def test_inflight_counts_queued_delayed_and_running_not_prefetched_or_draining():
    pool = make_pool(max_containers=1, retries=Retries(max_retries=1, initial_delay=50.0))
    make_fast(pool)
    assert pool.enqueue([2, 3, 4], 3.0) == [Assign("c1", (2, 3, 4))]
    assert pool.inflight() == 1  # 2 runs; 3 and 4 are only prefetched
    assert pool.container_outputs("c1", [(2, "failure", FAST)], 4.0) == [Retry(2, 1, 50.0)]
    assert pool.inflight() == 2  # 3 runs, 2 waits for its retry
    assert pool.enqueue([5], 5.0) == [Assign("c1", (5,))]
    assert pool.inflight() == 2  # 5 is prefetched
    # Inputs on a draining container do not count; the retry still does, and gets a new
    # container (max_containers limits live containers, and c1 is no longer live).
    assert pool.retire(6.0) == starts("c2")
    assert pool.inflight() == 1
    assert pool.enqueue([6], 7.0) == []  # c2 is still starting
    assert pool.inflight() == 2
    assert not pool.is_idle()


def test_fast_function_backlog_uses_measured_time_per_input():
    # c1 got 256 inputs at t=3 and returned them all 2 ms later: 8 us per input,
    # so 10,000 more drain in 0.08 s, far below a cold start: no new container.
    pool = make_pool()
    make_fast(pool, now=0.0)
    ids = list(range(2, 2 + PREFETCH_INPUTS))
    assert pool.enqueue(ids, 3.0) == [Assign("c1", tuple(ids))]
    done = [(i, "success", FAST) for i in ids]
    actions = pool.container_outputs("c1", done, 3.002)
    assert not [a for a in actions if isinstance(a, StartContainer)]
    backlog = list(range(1000, 11000))
    actions = pool.enqueue(backlog, 3.003)
    assert not [a for a in actions if isinstance(a, StartContainer)]


def test_fast_function_with_slow_platform_time_scales_up():
    # Same shape, but each input took 10 ms of wall time at the busy container:
    # 10,000 queued inputs need 100 s, so more containers are worth starting.
    pool = make_pool(max_containers=3)
    make_fast(pool, now=0.0)
    ids = list(range(2, 2 + PREFETCH_INPUTS))
    assert pool.enqueue(ids, 3.0) == [Assign("c1", tuple(ids))]
    done = [(i, "success", FAST) for i in ids]
    pool.container_outputs("c1", done, 3.0 + 0.01 * len(ids))
    actions = pool.enqueue(list(range(1000, 11000)), 6.0)
    assert [a for a in actions if isinstance(a, StartContainer)] == [
        StartContainer("c2"),
        StartContainer("c3"),
    ]


def test_retry_counts_are_forgotten_once_an_input_is_done():
    """Regression: ``failures`` kept an entry for every input that ever failed once."""
    pool = make_pool(retries=Retries(max_retries=3, initial_delay=0.0))
    running_one(pool, 1)
    assert pool.container_outputs("c1", [(1, "failure", 0.1)], 2.0) == [
        Retry(1, attempt=1, delay=0.0),
        Assign("c1", (1,)),
    ]
    assert pool.failures == {1: 1}
    assert pool.container_outputs("c1", [(1, "success", 0.1)], 3.0) == [Complete(1)]
    assert pool.failures == {}
    # Also when a failed input is cancelled, or its pool gives up on it or stops.
    pool.enqueue([2], 4.0)
    pool.container_outputs("c1", [(2, "failure", 0.1)], 5.0)
    assert pool.failures == {2: 1}
    pool.cancel([2], 6.0)
    assert pool.failures == {}
    pool.enqueue([3], 7.0)
    pool.container_outputs("c1", [(3, "failure", 0.1)], 8.0)
    pool.stop_all()
    assert pool.failures == {}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("policy", [{}, {"max_inputs": 4}, {"batch_size": 3, "max_containers": 5}])
def test_kept_counts_match_a_recount_through_random_events(seed: int, policy: dict):
    """The pool keeps its live/ready/running counts and its load heap as containers change
    (so an event costs the same in a pool of 10,000 containers); after every event of a
    random history they equal a recount. (Which container gets which input is checked by
    the exact-action tests above, unchanged.)"""
    import random

    rng = random.Random(seed)
    pool = make_pool(scaledown_window=5.0, **policy)
    slots = pool.policy.slots
    next_input = itertools.count(1)
    now = 0.0
    for _ in range(400):
        now += rng.random()
        live = pool._live()
        event = rng.choice(["enqueue", "ready", "outputs", "exit", "cancel", "tick", "retire"])
        starting = [c for c in live if c.status == "starting"]
        busy = [c for c in pool.containers.values() if c.assigned]
        if event == "enqueue":
            actions = pool.enqueue([next(next_input) for _ in range(rng.randint(1, 6))], now)
        elif event == "ready" and starting:
            actions = pool.container_ready(rng.choice(starting).container_id, now)
        elif event == "outputs" and busy:
            c = rng.choice(busy)
            done = c.assigned[: rng.randint(1, len(c.assigned))]
            outcome = rng.choice(["success", "success", "failure"])
            actions = pool.container_outputs(c.container_id, [(i, outcome, 0.5) for i in done], now)
        elif event == "exit" and pool.containers:
            actions = pool.container_exited(rng.choice(list(pool.containers)), now, "gone")
        elif event == "cancel" and busy:
            actions = pool.cancel(rng.choice(busy).assigned[:1], now)
        elif event == "retire" and rng.random() < 0.05:
            actions = pool.retire(now)
        else:
            actions = pool.tick(now)
        for action in actions:  # a stopped container goes, as the dispatcher reports
            if isinstance(action, StopContainer) and rng.random() < 0.5:
                pool.container_exited(action.container_id, now, "stopped")
        live = pool._live()
        recount = (
            len(live),
            sum(1 for c in live if c.status == "ready"),
            sum(min(len(c.assigned), slots) for c in live),
        )
        assert pool._census() == recount
        assert pool.inflight() == len(pool.pending) + len(pool.delayed) + recount[2]


def test_one_quick_input_does_not_make_a_slow_map_run_one_at_a_time():
    """A map whose first input returns at once and whose others take seconds (issue 19:
    ``sleep(i)`` for i in 0..9 ran one at a time): one measurement is not trusted, so the
    queue is neither prefetched into the first container nor left to "drain soon"."""
    pool = make_pool()
    assert pool.enqueue(range(10), 0.0) == starts(*(f"c{i}" for i in range(1, 11)))
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (0,))]
    # Input 0 returns at once; c1 takes the next one, the rest wait for their containers.
    assert pool.container_outputs("c1", [(0, "success", 0.0)], 1.0) == [
        Complete(0),
        Assign("c1", (1,)),
    ]
    assert [len(c.assigned) for c in pool.containers.values()] == [1] + [0] * 9
    for n in range(2, 10):  # each other input gets a container of its own
        assert pool.container_ready(f"c{n}", 1.1) == [Assign(f"c{n}", (n,))]
    assert not pool.pending


def test_a_container_with_a_lifetime_of_inputs_drains_after_them():
    """``max_inputs=1`` (Modal's single-use containers): a container takes one input in its
    life, then stops once it is done; the next input goes to a new container."""
    pool = make_pool(lifetime_inputs=1)
    assert pool.enqueue([1, 2], 0.0) == starts("c1", "c2")
    assert pool.container_ready("c1", 1.0) == [Assign("c1", (1,))]
    assert pool.containers["c1"].status == "draining" and pool.n_live == 1
    actions = pool.container_outputs("c1", [(1, "success", SLOW)], 2.0)
    assert Complete(1) in actions and StopContainer("c1") in actions
    assert pool.container_ready("c2", 2.5) == [Assign("c2", (2,))]
    assert pool.enqueue([3], 3.0) == starts("c3")  # c2 took its one input
    pool2 = make_pool(lifetime_inputs=2, max_inputs=4)
    pool2.enqueue([1, 2, 3], 0.0)
    assert pool2.container_ready("c1", 1.0)[0] == Assign("c1", (1, 2))
