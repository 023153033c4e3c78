"""The scheduler and autoscaler of one container pool, as an I/O-free state machine.

A pool holds the containers of one function (and, for classes, one set of
parameter values). Events go in as method calls, actions come out as a list;
the async shell (``dispatcher.py``) performs them. Nothing here reads a clock,
sleeps or does I/O, so tests feed events and assert the exact actions.

Autoscaling follows the architecture: desired containers =
clamp(ceil(in-flight / target per container) + buffer, min, max), where
in-flight counts queued inputs and inputs running in containers. One more rule
keeps small, fast backlogs from paying for cold starts: when the ready
containers would drain the queue sooner than a new container could start (both
measured), no container is added.

Fast functions get inputs ahead of time (a prefetch window) so that a container
is never idle waiting for the next round trip; slow functions get only as many
inputs as they have slots, so that new containers can take the rest.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..retries import Retries

LIVE = ("starting", "ready")
FAST_FUNCTION_S = 0.002  # functions faster than this get a prefetch window
PREFETCH_INPUTS = 256
EWMA_WEIGHT = 0.2
# Durations the pool must have seen before it trusts their average: until then it neither
# prefetches nor holds back new containers because the queue "will drain soon". (One input
# that returned at once made a map of slow inputs run one at a time in one container.)
TRUSTED_AFTER = 8
DEFAULT_STARTUP_S = 1.0
MAX_START_FAILURES = 3


@dataclass(frozen=True)
class PoolPolicy:
    """What the function asked for, as the pool needs it."""

    max_inputs: int = 1
    target_inputs: int | None = None
    batch_size: int = 0
    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    scaledown_window: float = 60.0
    retries: Retries = field(default_factory=lambda: Retries(0))
    # Inputs a container takes in its life (Modal's ``max_inputs``; 0: no limit). One that
    # has taken them drains: it finishes them and stops, and others start for the rest.
    lifetime_inputs: int = 0

    @property
    def slots(self) -> int:
        """Inputs one container runs at the same time."""
        return max(self.max_inputs, self.batch_size, 1)

    @property
    def target(self) -> int:
        """Inputs per container that the autoscaler aims for."""
        return max(self.target_inputs or self.slots, 1)


# -- actions -------------------------------------------------------------------
@dataclass(frozen=True)
class StartContainer:
    container_id: str


@dataclass(frozen=True)
class StopContainer:
    container_id: str


@dataclass(frozen=True)
class Assign:
    container_id: str
    input_ids: tuple[int, ...]


@dataclass(frozen=True)
class Complete:
    """The container's output for this input is final: store it."""

    input_id: int


@dataclass(frozen=True)
class Retry:
    """Discard this attempt's output; the input runs again after ``delay``."""

    input_id: int
    attempt: int
    delay: float


@dataclass(frozen=True)
class Fail:
    """The input is lost for good (container died, no retries left): store ``reason``."""

    input_id: int
    reason: str


@dataclass(frozen=True)
class CancelOnContainer:
    container_id: str
    input_ids: tuple[int, ...]


Action = StartContainer | StopContainer | Assign | Complete | Retry | Fail | CancelOnContainer


@dataclass
class ContainerState:
    container_id: str
    started_at: float
    status: str = "starting"  # starting | ready | draining | stopping
    assigned: list[int] = field(default_factory=list)
    idle_since: float | None = None
    busy_since: float | None = None
    last_output_at: float | None = None
    taken: int = 0  # inputs assigned over its life (for ``lifetime_inputs``)


class Pool:
    """Scheduling state of one pool. Every public method is an event."""

    def __init__(
        self,
        key: str,
        policy: PoolPolicy,
        new_container_id: Callable[[], str],
        room: Callable[[], int] = lambda: 1 << 30,
        keep_warm: bool = True,
    ) -> None:
        self.key = key
        self.policy = policy
        self._slots = policy.slots  # (the policy is frozen: asked on every event)
        self.keep_warm = keep_warm
        self._new_id = new_container_id
        self._room = room
        self.pending: deque[int] = deque()
        self.spilled = 0  # queued inputs the dispatcher keeps in the store, not in ``pending``
        self.delayed: list[tuple[float, int]] = []
        self.failures: dict[int, int] = {}
        self.containers: dict[str, ContainerState] = {}
        self.ewma_duration: float | None = None
        self.n_durations = 0  # inputs measured into ewma_duration
        self.ewma_startup = DEFAULT_STARTUP_S
        self.start_failures = 0
        self.cancelled: set[int] = set()
        self.stopped = False
        self.ewma_service: float | None = (
            None  # seconds per input at one busy container, all costs in
        )
        # Kept as containers change, so that an event costs the same in a pool of 10 or
        # 10,000 containers: live ones, ready ones, inputs running on live ones, and a
        # heap of (load, age, id) of ready containers (stale entries are skipped).
        self._age = itertools.count()
        self._ages: dict[str, int] = {}
        self._n_live = 0
        self._n_ready = 0
        self._running = 0
        self._loads: list[tuple[int, int, str]] = []

    # -- events --------------------------------------------------------------
    def enqueue(
        self, input_ids: Iterable[int], now: float, failures: dict[int, int] | None = None
    ) -> list[Action]:
        self.pending.extend(input_ids)
        if failures:
            self.failures.update(failures)
        return self._react(now)

    def container_ready(self, container_id: str, now: float) -> list[Action]:
        c = self.containers.get(container_id)
        if c is None or c.status != "starting":
            return []
        self._set_status(c, "ready")
        c.idle_since = now
        self.start_failures = 0
        self.ewma_startup = _ewma(self.ewma_startup, now - c.started_at)
        return self._react(now)

    def container_outputs(
        self, container_id: str, results: Sequence[tuple[int, str, float]], now: float
    ) -> list[Action]:
        """``results``: (input id, "success" | "failure" | "cancelled", seconds it ran)."""
        actions: list[Action] = []
        c = self.containers.get(container_id)
        before = len(c.assigned) if c is not None else 0
        for input_id, outcome, duration in results:
            if c is None or input_id not in c.assigned:
                continue  # not ours any more (failed over when its container died)
            c.assigned.remove(input_id)
            if outcome != "cancelled":
                self.ewma_duration = (
                    duration if self.ewma_duration is None else _ewma(self.ewma_duration, duration)
                )
                self.n_durations += 1
            if input_id in self.cancelled:
                self.cancelled.discard(input_id)
                self.failures.pop(input_id, None)
                continue
            if outcome == "failure":
                actions.append(self._retry_or(input_id, now, Complete(input_id)))
            else:
                self.failures.pop(input_id, None)
                actions.append(Complete(input_id))
        if c is not None:
            self._load_changed(c, before)
        if c is not None and not c.assigned:
            c.idle_since = now
        if c is not None and results:
            self._sample_service(c, len(results), now)
        return actions + self._react(now)

    def container_exited(
        self, container_id: str, now: float, reason: str, preempted: bool = False
    ) -> list[Action]:
        """``preempted``: its node went away. Its inputs, running ones included, go back to
        the front of the queue without counting against ``retries`` (Modal's preemption)."""
        c = self._drop(container_id)
        if c is None or self.stopped:
            return []
        actions: list[Action] = []
        if preempted:
            back = [i for i in c.assigned if i not in self.cancelled]
            self.pending.extendleft(reversed(back))
            self.cancelled.difference_update(c.assigned)
            return self._react(now)
        if c.status == "starting":
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                actions += self._fail_all_pending(
                    f"{reason} (container failed to start {self.start_failures} times)"
                )
                self.start_failures = 0
        running = [i for i in c.assigned[: self.policy.slots] if i not in self.cancelled]
        queued = c.assigned[self.policy.slots :]
        self.pending.extendleft(reversed([i for i in queued if i not in self.cancelled]))
        self.cancelled.difference_update(c.assigned)
        for input_id in running:
            actions.append(self._retry_or(input_id, now, Fail(input_id, reason)))
        return actions + self._react(now)

    def container_init_failed(self, container_id: str, now: float, reason: str) -> list[Action]:
        """Import or ``@enter`` failed: the queued inputs would fail the same way."""
        c = self.containers.get(container_id)
        if c is not None:
            self._set_status(c, "stopping")
            self.pending.extendleft(reversed([i for i in c.assigned if i not in self.cancelled]))
            self.cancelled.difference_update(c.assigned)
            c.assigned.clear()
        return self._fail_all_pending(reason)

    def cancel(self, input_ids: Iterable[int], now: float) -> list[Action]:
        ids = set(input_ids)
        for input_id in ids:
            self.failures.pop(input_id, None)
        self.pending = deque(i for i in self.pending if i not in ids)
        self.delayed = [(t, i) for t, i in self.delayed if i not in ids]
        heapq.heapify(self.delayed)
        actions: list[Action] = []
        for c in self.containers.values():
            hit = tuple(i for i in c.assigned if i in ids)
            if hit:
                self.cancelled.update(hit)
                actions.append(CancelOnContainer(c.container_id, hit))
        return actions + self._react(now)

    def retire(self, now: float) -> list[Action]:
        """A new version was deployed: current containers finish their inputs, then stop."""
        for c in self.containers.values():
            if c.status in ("starting", "ready"):
                self._set_status(c, "draining")
        return self._react(now)

    def stop_all(self) -> list[Action]:
        """The app stopped: drop queued inputs and stop every container, for good."""
        self.stopped = True
        self.pending.clear()
        self.spilled = 0
        self.delayed.clear()
        self.failures.clear()
        actions: list[Action] = []
        for c in self.containers.values():
            if c.status != "stopping":
                self._set_status(c, "stopping")
                actions.append(StopContainer(c.container_id))
        return actions

    def tick(self, now: float) -> list[Action]:
        return self._react(now)

    def evict_idle(self, now: float) -> list[Action]:
        """The node needs room for another pool: stop this pool's longest-idle container."""
        idle = [c for c in self.containers.values() if c.status == "ready" and not c.assigned]
        if not idle:
            return []
        c = min(idle, key=lambda c: c.idle_since or now)
        self._set_status(c, "stopping")
        return [StopContainer(c.container_id)]

    def idle_since(self) -> float | None:
        """When the longest-idle ready container went idle (None if none is idle)."""
        times = [
            c.idle_since for c in self.containers.values() if c.status == "ready" and not c.assigned
        ]
        return min((t for t in times if t is not None), default=None)

    # -- queries -------------------------------------------------------------
    def inflight(self) -> int:
        """Inputs that want a live container: queued, waiting to retry, or running on one.

        Inputs on draining containers stay there, so they do not count.
        """
        return len(self.pending) + self.spilled + len(self.delayed) + self._running

    def is_idle(self) -> bool:
        return not self.pending and not self.spilled and not self.delayed and not self.containers

    # -- internals -------------------------------------------------------------
    def _react(self, now: float) -> list[Action]:
        if self.stopped:
            return []
        while self.delayed and self.delayed[0][0] <= now:
            self.pending.append(heapq.heappop(self.delayed)[1])
        actions = self._dispatch(now)
        actions += self._scale(now)
        return actions

    def _trusted(self) -> bool:
        """Whether ``ewma_duration`` rests on enough inputs to act on."""
        return self.ewma_duration is not None and self.n_durations >= TRUSTED_AFTER

    def _window(self) -> int:
        slots = self.policy.slots
        if self.policy.batch_size:
            return slots * 2
        if (
            self._trusted()
            and self.ewma_duration is not None
            and self.ewma_duration < FAST_FUNCTION_S
        ):
            return max(slots, PREFETCH_INPUTS)
        return slots

    def _dispatch(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if not self.pending:
            return actions
        window = self._window()
        # Spread work: with a prefetch window, a container takes at most its share of the
        # queue, counting the containers still starting (theirs waits for them).
        share = (
            math.ceil(len(self.pending) / max(self._n_live, self._n_ready))
            if self._n_ready and window > self._slots
            else window
        )
        # Least loaded first (the oldest of equals), each container at most once per event.
        given: list[ContainerState] = []
        taken: set[str] = set()
        loads = self._loads
        while self.pending and loads:
            load, _, cid = loads[0]
            c = self.containers.get(cid)
            if c is None or c.status != "ready" or len(c.assigned) != load or cid in taken:
                heapq.heappop(loads)  # stale
                continue
            free = window - load
            if free <= 0:
                break
            heapq.heappop(loads)
            taken.add(cid)
            limit = self.policy.lifetime_inputs
            if limit:
                free = min(free, limit - c.taken)
            take = min(free, max(share, 1), len(self.pending))
            ids = tuple(self.pending.popleft() for _ in range(take))
            if not c.assigned:
                c.busy_since = now
            c.assigned.extend(ids)
            c.taken += take
            self._running += min(load + take, self._slots) - min(load, self._slots)
            c.idle_since = None
            actions.append(Assign(c.container_id, ids))
            if limit and c.taken >= limit:
                self._set_status(c, "draining")  # its last inputs: it stops once they are done
            else:
                given.append(c)
        for c in given:  # back in the heap at their new loads
            heapq.heappush(loads, (len(c.assigned), self._ages[c.container_id], c.container_id))
        return actions

    @property
    def backlog(self) -> int:
        """Inputs waiting for a container: queued here, spilled to the store, or delayed."""
        return len(self.pending) + self.spilled + len(self.delayed)

    @property
    def n_live(self) -> int:
        return self._n_live

    @property
    def n_running(self) -> int:
        return self._running

    def _live(self) -> list[ContainerState]:
        return [c for c in self.containers.values() if c.status in LIVE]

    def _census(self) -> tuple[int, int, int]:
        """Live containers, ready ones, and inputs running on live ones (prefetched ones
        beyond a container's slots do not count)."""
        return self._n_live, self._n_ready, self._running

    # Every change of a container's status or load goes through these, which keep the counts.
    def _add(self, c: ContainerState) -> None:
        self.containers[c.container_id] = c
        self._ages[c.container_id] = next(self._age)
        self._n_live += 1  # it starts

    def _drop(self, container_id: str) -> ContainerState | None:
        c = self.containers.pop(container_id, None)
        if c is not None:
            self._leave(c)
            self._ages.pop(container_id, None)
        return c

    def _leave(self, c: ContainerState) -> None:
        """``c`` stops counting as live (and as ready)."""
        if c.status in LIVE:
            self._n_live -= 1
            self._running -= min(len(c.assigned), self._slots)
        if c.status == "ready":
            self._n_ready -= 1

    def _set_status(self, c: ContainerState, status: str) -> None:
        """Statuses only move forward: starting -> ready -> draining | stopping."""
        if c.status == status:
            return
        if status == "ready":  # starting -> ready: live before and after
            self._n_ready += 1
            c.status = status
            self._push(c)
            return
        self._leave(c)  # -> draining | stopping: no longer live
        c.status = status

    def _load_changed(self, c: ContainerState, before: int) -> None:
        if c.status in LIVE:
            slots = self._slots
            self._running += min(len(c.assigned), slots) - min(before, slots)
        if c.status == "ready":
            self._push(c)

    def _push(self, c: ContainerState) -> None:
        loads = self._loads
        heapq.heappush(loads, (len(c.assigned), self._ages[c.container_id], c.container_id))
        if len(loads) > 4 * len(self.containers) + 64:  # mostly stale: rebuild
            self._loads = [
                (len(x.assigned), self._ages[x.container_id], x.container_id)
                for x in self.containers.values()
                if x.status == "ready"
            ]
            heapq.heapify(self._loads)

    def _sample_service(self, c: ContainerState, n: int, now: float) -> None:
        """How long one input takes at a busy container, platform overhead included."""
        if c.busy_since is not None:
            interval = now - max(c.busy_since, c.last_output_at or c.busy_since)
            sample = interval / n
            weight = min(1.0, EWMA_WEIGHT * n)  # a batch of many outputs says more than one output
            old = self.ewma_service
            self.ewma_service = sample if old is None else (1 - weight) * old + weight * sample
        c.last_output_at = now
        if not c.assigned:
            c.busy_since = None

    def _drain_estimate(self, now: float, ready_slots: int, n_ready: int) -> float | None:
        """Seconds the ready containers need for the queue, or None if unknown.

        For fast functions the platform, not the function, sets the pace, so
        the measured time per input at a busy container is used; until there
        is one, the pool waits rather than paying for cold starts it may not need.
        """
        if self.ewma_duration is None or not self._trusted() or not ready_slots:
            return None
        if self.ewma_duration < FAST_FUNCTION_S:
            per_input = self.ewma_service or 0.0
            return len(self.pending) * per_input / max(n_ready, 1)
        return len(self.pending) * self.ewma_duration / ready_slots

    def desired(self, now: float = 0.0) -> int:
        p = self.policy
        n_live, n_ready, running = self._census()
        inflight = len(self.pending) + self.spilled + len(self.delayed) + running
        want = math.ceil(inflight / p.target) + (p.buffer_containers if inflight else 0)
        drain_s = self._drain_estimate(now, self._slots * n_ready, n_ready)
        if drain_s is not None and drain_s < self.ewma_startup:
            want = min(want, n_live)
        if self.keep_warm:
            want = max(want, p.min_containers)
        if p.max_containers is not None:
            want = min(want, p.max_containers)
        return want

    def _scale(self, now: float) -> list[Action]:
        actions: list[Action] = []
        n_live = self._n_live
        winding_down = len(self.containers) > n_live  # draining or stopping ones
        want = self.desired(now)
        room = self._room() if want > n_live else 0
        for _ in range(min(want - n_live, room)):
            cid = self._new_id()
            self._add(ContainerState(cid, started_at=now))
            actions.append(StartContainer(cid))
        excess = n_live - want
        if excess > 0:  # (the idle ones are looked for only when some may go)
            idle = sorted(
                (
                    c
                    for c in self.containers.values()
                    if c.status == "ready" and not c.assigned and c.idle_since is not None
                ),
                key=lambda c: c.idle_since or 0.0,
            )
            for c in idle:
                if excess <= 0:
                    break
                if (c.idle_since or 0.0) + self.policy.scaledown_window <= now:
                    self._set_status(c, "stopping")
                    actions.append(StopContainer(c.container_id))
                    excess -= 1
        if winding_down:
            for c in self.containers.values():
                if c.status == "draining" and not c.assigned:
                    c.status = "stopping"  # (neither is live: no count changes)
                    actions.append(StopContainer(c.container_id))
        return actions

    def _retry_or(self, input_id: int, now: float, final: Action) -> Action:
        n = self.failures.get(input_id, 0) + 1
        self.failures[input_id] = n
        retries = self.policy.retries
        if n <= retries.max_retries:
            delay = retries.delay(n)
            heapq.heappush(self.delayed, (now + delay, input_id))
            return Retry(input_id, attempt=n, delay=delay)
        self.failures.pop(input_id, None)
        return final

    def _fail_all_pending(self, reason: str) -> list[Action]:
        ids = list(self.pending) + [i for _, i in self.delayed]
        self.pending.clear()
        self.delayed.clear()
        for input_id in ids:
            self.failures.pop(input_id, None)
        return [Fail(i, reason) for i in ids]


def _ewma(old: float, new: float) -> float:
    return (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * new
