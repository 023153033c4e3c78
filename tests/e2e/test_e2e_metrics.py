"""``GET /metrics`` (issue 18): the control plane in Prometheus's format, owners only.

An app runs a few calls (three succeed, one fails); the scrape then shows them
counted by outcome, their durations, the queue time, the container's cold
start, the API's request latency, queues and containers by state, and the
container's CPU and memory where it has a cgroup. No token gets 401, an invoke
token 403: metrics name every app and function.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(180)

APP = """
import ketch

app = ketch.App("metrics-app")


@app.function()
def ok(x):
    return x


@app.function(retries=0)
def boom(x):
    raise ValueError("no")


@app.local_entrypoint()
def main():
    print("OK", list(ok.map(range(3))))
    try:
        boom.remote(1)
    except ValueError:
        print("BOOM")
"""


def _get(url: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def _value(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found, f"no {series} in\n{text}"
    return float(found.group(1))


def test_metrics_count_calls_and_need_an_owner(fresh_ketch_env, tmp_path):
    env = fresh_ketch_env
    (tmp_path / "app.py").write_text(APP)
    done = env.cli("run", "app.py", cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "BOOM" in done.stdout, done.describe()
    url = env.server_info()["url"] + "/metrics"
    owner = (env.home / "token").read_text().strip()
    status, text = _get(url, owner)
    assert status == 200, text
    app_fn = 'app="metrics-app",function="ok"'
    assert _value(text, f'ketch_calls_total{{{app_fn},outcome="success"}}') == 3
    boom = 'app="metrics-app",function="boom"'
    assert _value(text, f'ketch_calls_total{{{boom},outcome="failure"}}') == 1
    assert _value(text, f"ketch_call_duration_seconds_count{{{app_fn}}}") == 3
    assert _value(text, f"ketch_queue_time_seconds_count{{{app_fn}}}") == 3
    assert _value(text, f"ketch_cold_start_seconds_count{{{app_fn}}}") >= 1
    assert _value(text, 'ketch_api_request_seconds_count{method="CallCreate"}') >= 2
    assert "# TYPE ketch_inputs_queued gauge" in text and "# TYPE ketch_containers gauge" in text
    assert "# TYPE ketch_container_memory_bytes gauge" in text
    assert _get(url, None)[0] == 401
    made = env.cli("token", "create", "--role", "invoke").check()
    invoke = next(w for w in made.stdout.split() if w.startswith("kt-"))
    assert _get(url, invoke)[0] == 403


LIVE = """
import json, os, time, urllib.request
import ketch

app = ketch.App("metrics-live")


@app.function()
def busy(x):
    s = 0
    for i in range(2_000_000):
        s += i
    time.sleep(30)


if __name__ == "__main__":
    with app.run():
        call = busy.spawn(1)
        home = os.environ["KETCH_HOME"]
        info = json.load(open(os.path.join(home, "server.json")))
        token = open(os.path.join(home, "token")).read().strip()
        request = urllib.request.Request(
            info["url"] + "/metrics", headers={"Authorization": "Bearer " + token}
        )
        for _ in range(100):  # until its container has run a while
            text = urllib.request.urlopen(request, timeout=30).read().decode()
            if 'ketch_inputs_running{app="metrics-live",function="busy"} 1.0' in text:
                time.sleep(2)
                text = urllib.request.urlopen(request, timeout=30).read().decode()
                break
            time.sleep(0.2)
        print(text)
        call.cancel()
"""


def test_a_live_sandbox_container_shows_its_cpu_and_memory(sandbox_env, tmp_path):
    (tmp_path / "live.py").write_text(LIVE)
    done = sandbox_env.python(str(tmp_path / "live.py"), timeout=150)
    assert done.returncode == 0, done.describe()
    labels = r'\{app="metrics-live",container="ta-\w+",function="busy"\}'
    cpu = re.search(rf"^ketch_container_cpu_seconds_total{labels} (\S+)$", done.stdout, re.M)
    memory = re.search(rf"^ketch_container_memory_bytes{labels} (\S+)$", done.stdout, re.M)
    assert cpu and float(cpu.group(1)) > 0, done.stdout[-3000:]
    assert memory and float(memory.group(1)) > 1 << 20, done.stdout[-3000:]
