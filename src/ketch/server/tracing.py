"""OpenTelemetry traces of calls, exported over OTLP/HTTP where
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``pip install 'ketch[otel]'``).

One trace per call. The root span ``ketch.call`` runs from the call's creation to its
last input's end. Under it, per input (the first ``TRACED_INPUTS`` of a map):

- ``ketch.queued``: from the input joining its pool until a container gets it;
- ``ketch.run``: from then until its output came back; attributes ``ketch.container``
  and ``ketch.status``.

A client that traces (the SDK, with the same variable set and OpenTelemetry installed)
sends its span's ``traceparent`` with the call. The call's trace then continues the
client's: client, queue, container, result.

Spans are made when their end is known, with the times recorded on the way. The batch
processor exports them in the background, off the event loop's path. Without the
variable, or without the packages (a warning says so once), nothing here runs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TRACED_INPUTS = 100


@dataclass
class _Open:
    """A call being traced: its times so far."""

    start_ns: int
    app: str
    function: str
    parent: Any  # the client's span context, if it sent one
    # idx -> [queued, sent, container, ended, status] (times in ns)
    inputs: dict[int, list[Any]] = field(default_factory=dict)


class Tracer:
    def __init__(self) -> None:
        self.tracer: Any = None
        self.calls: dict[str, _Open] = {}
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            logger.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
                "pip install 'ketch[otel]' to export traces"
            )
            return
        provider = TracerProvider(resource=Resource.create({"service.name": "ketch"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.provider = provider
        self.tracer = provider.get_tracer("ketch")

    @property
    def on(self) -> bool:
        return self.tracer is not None

    def call_created(self, call_id: str, app: str, function: str, traceparent: Any) -> None:
        if self.tracer is None or call_id in self.calls:
            return
        parent = None
        if isinstance(traceparent, str):
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        self.calls[call_id] = _Open(time.time_ns(), app, function, parent)

    def queued(self, call_id: str, idx: int) -> None:
        call = self.calls.get(call_id) if self.tracer is not None else None
        if call is not None and idx < TRACED_INPUTS and idx not in call.inputs:
            call.inputs[idx] = [time.time_ns(), None, None, None, None]

    def sent(self, call_id: str, idx: int, container_id: str) -> None:
        call = self.calls.get(call_id) if self.tracer is not None else None
        entry = call.inputs.get(idx) if call is not None else None
        if entry is not None:
            entry[1], entry[2] = time.time_ns(), container_id

    def outputs(self, rows: list[dict[str, Any]], final: Any) -> None:
        """Outputs were written: the traced inputs among them ended."""
        now = time.time_ns()
        for row in rows:
            call = self.calls.get(row["call_id"])
            entry = call.inputs.get(row["idx"]) if call is not None else None
            if entry is not None and row["status"] in final:
                entry[3], entry[4] = now, row["status"]

    def finished(self, call_id: str) -> None:
        """The call ended: its spans go to the exporter."""
        call = self.calls.pop(call_id, None) if self.tracer is not None else None
        if call is None:
            return
        from opentelemetry import trace

        end = time.time_ns()
        attrs = {"ketch.call_id": call_id, "ketch.app": call.app, "ketch.function": call.function}
        root = self.tracer.start_span(
            "ketch.call", context=call.parent, start_time=call.start_ns, attributes=attrs
        )
        ctx = trace.set_span_in_context(root)
        for idx, (queued, sent, container, ended, status) in sorted(call.inputs.items()):
            span = self.tracer.start_span(
                "ketch.queued", context=ctx, start_time=queued, attributes={"ketch.input": idx}
            )
            span.end(end_time=sent or ended or end)
            if sent is not None:
                run_attrs = {
                    "ketch.input": idx,
                    "ketch.container": container or "",
                    "ketch.status": status or "unknown",
                }
                span = self.tracer.start_span(
                    "ketch.run", context=ctx, start_time=sent, attributes=run_attrs
                )
                span.end(end_time=ended or end)
        root.end(end_time=end)

    def close(self) -> None:
        if self.tracer is not None:
            self.provider.shutdown()


def client_traceparent() -> str | None:
    """The current client span's ``traceparent``, where the client traces (else None)."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")
