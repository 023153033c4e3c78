"""``GET /metrics``: the control plane in Prometheus's text format (``prometheus_client``).

What happens on the event path (an input ends, a container is ready, a request
is answered) is kept in plain dictionaries: an observation is a bisect and two
additions, so metrics cost nothing a call would notice. They become metric
families only when scraped, beside gauges read at that moment from the
scheduler's pools and from each container's cgroup.

Names are ``ketch_<noun>_<unit>``. Labels: ``app`` (its name), ``function``
(its tag), ``outcome``, ``state``, ``container``, ``method`` (an RPC method;
only methods that exist, so a client cannot grow the label set). A "call" here
is one input: a ``.map`` of 1,000 inputs is 1,000 calls, as Modal counts them.

Example (a Prometheus scrape job; the token is the owner's or a ``deploy`` one)::

    scrape_configs:
      - job_name: ketch
        authorization: {credentials_file: /root/.ketch/token}
        static_configs: [{targets: ["127.0.0.1:7480"]}]
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..worker import gpus

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           300.0, 900.0, 3600.0)  # fmt: skip


class Histogram:
    """Bucket counts and sums per label tuple, turned into a family when scraped."""

    def __init__(self, buckets: Sequence[float] = SECONDS) -> None:
        self.buckets = list(buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.series.get(labels)
        if row is None:  # a count per bucket, one for +Inf, then the sum
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def observe_many(self, labels: tuple[str, ...], values: Sequence[float]) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        find, buckets = bisect.bisect_left, self.buckets
        for value in values:
            row[find(buckets, value)] += 1
        row[-1] += sum(values)

    def family(self, name: str, doc: str, label_names: Sequence[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=list(label_names))
        bounds = [*(f"{b:g}" for b in self.buckets), "+Inf"]
        for labels, row in self.series.items():
            total, cumulative = 0.0, []
            for bound, n in zip(bounds, row[:-1], strict=True):
                total += n
                cumulative.append((bound, total))
            family.add_metric(list(labels), cumulative, row[-1])
        return family


class _Off(Histogram):
    """A histogram that records nothing (``observe = false``)."""

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        pass

    def observe_many(self, labels: tuple[str, ...], values: Sequence[float]) -> None:
        pass


class Metrics:
    """What the dispatcher, the API and the builds record as they go (nothing with
    ``observe = false``, which ``benchmarks/observability.py`` compares against)."""

    def __init__(self, enabled: bool = True) -> None:
        kind = Histogram if enabled else _Off
        self.enabled = enabled
        self.calls: dict[tuple[str, str, str], int] = {}  # (app, function, outcome)
        self.call_seconds = kind()  # (app, function): in the container
        self.queue_seconds = kind()  # (app, function): queued until sent to one
        self.cold_start_seconds = kind()  # (app, function): started until ready
        self.build_seconds = kind()  # (outcome,)
        self.request_seconds = kind()  # (method,)
        self.names: dict[str, tuple[str, str]] = {}  # function id -> (app name, tag)

    def count_calls(self, labels: tuple[str, str, str], n: int = 1) -> None:
        if self.enabled:
            self.calls[labels] = self.calls.get(labels, 0) + n


class _Collector(Collector):
    def __init__(self, d: Dispatcher) -> None:
        self.d = d

    def collect(self) -> Iterator[Metric]:
        d, m = self.d, self.d.metrics
        queued = GaugeMetricFamily(
            "ketch_inputs_queued", "Inputs waiting for a container", labels=["app", "function"]
        )
        running = GaugeMetricFamily(
            "ketch_inputs_running", "Inputs running in containers", labels=["app", "function"]
        )
        containers = GaugeMetricFamily(
            "ketch_containers", "Function containers by state", labels=["app", "function", "state"]
        )
        per_fn: dict[tuple[str, str], list[int]] = {}
        by_state: dict[tuple[str, str, str], int] = {}
        for key, pool in d.pools.items():
            info = d.pool_info.get(key)
            if info is None:
                continue
            labels = self.d.metric_labels(info.function_id, info.app_id)
            row = per_fn.setdefault(labels, [0, 0])
            row[0] += pool.backlog
            row[1] += pool.n_running
            for c in pool.containers.values():
                state_key = (*labels, c.status)
                by_state[state_key] = by_state.get(state_key, 0) + 1
        for labels, (n_queued, n_running) in per_fn.items():
            queued.add_metric(list(labels), n_queued)
            running.add_metric(list(labels), n_running)
        for state_key, n in by_state.items():
            containers.add_metric(list(state_key), n)
        yield from (queued, running, containers)
        calls = CounterMetricFamily(
            "ketch_calls", "Calls (inputs) ended, by outcome", labels=["app", "function", "outcome"]
        )
        for key3, n in m.calls.items():
            calls.add_metric(list(key3), n)
        yield calls
        yield m.call_seconds.family(
            "ketch_call_duration_seconds", "Time a call ran in its container", ["app", "function"]
        )
        yield m.queue_seconds.family(
            "ketch_queue_time_seconds", "Time a call waited for a container", ["app", "function"]
        )
        yield m.cold_start_seconds.family(
            "ketch_cold_start_seconds",
            "Time from a container's start to its first readiness",
            ["app", "function"],
        )
        yield m.build_seconds.family("ketch_image_build_seconds", "Image builds", ["outcome"])
        yield m.request_seconds.family(
            "ketch_api_request_seconds", "The control plane's answers to RPCs", ["method"]
        )
        yield from self._usage()

    def _usage(self) -> Iterator[Metric]:
        """CPU and memory of each running function container (its cgroup, where it has one)."""
        usage = getattr(self.d.worker, "usage", None)
        cpu = CounterMetricFamily(
            "ketch_container_cpu_seconds",
            "CPU time a container used",
            labels=["app", "function", "container"],
        )
        memory = GaugeMetricFamily(
            "ketch_container_memory_bytes",
            "Memory a container uses now",
            labels=["app", "function", "container"],
        )
        if usage is not None:
            for container_id, handle in list(self.d.containers.items()):
                info = self.d.pool_info.get(handle.pool_key)
                try:
                    got = usage(container_id)
                except Exception:  # a scrape never fails for one container's numbers
                    logger.exception("could not read the usage of container %s", container_id)
                    continue
                if info is None or got is None:
                    continue
                labels = [*self.d.metric_labels(info.function_id, info.app_id), container_id]
                cpu_s, mem = got
                if cpu_s is not None:
                    cpu.add_metric(labels, cpu_s)
                if mem is not None:
                    memory.add_metric(labels, mem)
        yield cpu
        yield memory
        yield from self._gpus()

    def _gpus(self) -> Iterator[Metric]:
        """Utilization and memory of each GPU a function container holds (NVML)."""
        labels = ["app", "function", "container", "gpu"]
        util = GaugeMetricFamily(
            "ketch_container_gpu_utilization_ratio", "How busy a container's GPU is", labels=labels
        )
        used = GaugeMetricFamily(
            "ketch_container_gpu_memory_bytes",
            "GPU memory a container's GPU has in use",
            labels=labels,
        )
        held = {
            owner: indices
            for owner, indices in self.d.gpus.busy().items()
            if owner in self.d.containers
        }
        samples = gpus.sample(sorted({i for indices in held.values() for i in indices}))
        for container_id, indices in held.items():
            info = self.d.pool_info.get(self.d.containers[container_id].pool_key)
            if info is None:
                continue
            names = self.d.metric_labels(info.function_id, info.app_id)
            for index in indices:
                if index in samples:
                    ratio, memory = samples[index]
                    util.add_metric([*names, container_id, str(index)], ratio)
                    used.add_metric([*names, container_id, str(index)], memory)
        yield util
        yield used


def registry(d: Dispatcher) -> CollectorRegistry:
    """A registry of the control plane's own (never the process-wide default)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(d))
    return reg


def timed(metrics: Metrics, method: str, started: float) -> None:
    metrics.request_seconds.observe((method,), time.perf_counter() - started)
