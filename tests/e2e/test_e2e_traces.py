"""OpenTelemetry: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, each call is one trace sent over
OTLP/HTTP (a receiver here, on 127.0.0.1), continuing the client's span when it has one."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

pytestmark = pytest.mark.e2e

trace_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

APP = """
import ketch

app = ketch.App("traced")


@app.function()
def square(x: int) -> int:
    return x * x
"""

CLIENT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import ketch

trace.set_tracer_provider(TracerProvider())
square = ketch.Function.from_name("traced", "square")
with trace.get_tracer("client").start_as_current_span("client") as span:
    print("TRACE", format(span.get_span_context().trace_id, "032x"))
    print("RESULT", list(square.map([1, 2, 3])))
"""


class _Receiver(http.server.BaseHTTPRequestHandler):
    spans: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                _Receiver.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_each_call_is_a_trace_continuing_the_clients(fresh_ketch_env, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.spans = []
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    try:
        (tmp_path / "traced.py").write_text(APP)
        fresh_ketch_env.cli("deploy", "traced.py", cwd=tmp_path, extra_env=env).check()
        run = fresh_ketch_env.python("-c", CLIENT, cwd=tmp_path, extra_env=env, timeout=120)
        assert "RESULT [1, 4, 9]" in run.stdout, run.describe()
        trace_id = run.stdout.split("TRACE ", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        mine: list = []
        while time.monotonic() < deadline:
            mine = [s for s in _Receiver.spans if s.trace_id.hex() == trace_id]
            if sum(s.name == "ketch.run" for s in mine) == 3:
                break
            time.sleep(0.2)
        names = sorted(s.name for s in mine)
        assert names == ["ketch.call"] + ["ketch.queued"] * 3 + ["ketch.run"] * 3, names
        root = next(s for s in mine if s.name == "ketch.call")
        attrs = {a.key: a.value.string_value for a in root.attributes}
        assert attrs["ketch.app"] == "traced" and attrs["ketch.function"] == "square", attrs
        assert root.parent_span_id, "the call's span continues the client's"
        runs = [s for s in mine if s.name == "ketch.run"]
        assert all(s.parent_span_id == root.span_id for s in runs)
        statuses = {
            a.value.string_value for s in runs for a in s.attributes if a.key == "ketch.status"
        }
        assert statuses == {"success"}, statuses
    finally:
        server.shutdown()
        server.server_close()
