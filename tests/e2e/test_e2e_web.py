"""Web endpoints through the real CLI: FastAPI, streaming ASGI, WSGI, proxy auth, limits, scaling."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ketch_testing import KetchEnv

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = "web-demo"


@pytest.fixture(scope="module")
def web_env():
    """A control plane of its own: a 1 MiB body limit, so the 413 test needs no big upload, and
    a 2 s synchronous window, so the redirect test need not wait 150 s."""
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-web-", dir="/tmp"))
    env = KetchEnv(home)
    env.env["KETCH_WEB_MAX_BODY_MB"] = "1"
    env.env["KETCH_WEB_SYNC_WINDOW"] = "2"  # seconds before a slow request is answered with a 303
    deployed = env.cli("deploy", "examples/web_endpoints.py", timeout=60).check()
    env.urls = dict(re.findall(r"- (\S+) => (http://127\.0\.0\.1:\d+)", deployed.stdout))
    assert set(env.urls) == {
        "hello",
        "private",
        "streamer",
        "legacy",
        "broken",
        "Model.predict",
        "files",
    }, deployed.describe()
    yield env
    env.close()
    shutil.rmtree(home, ignore_errors=True)


def _request(
    url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None
):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _containers(env: KetchEnv) -> int:
    return env.app_record(APP)["n_containers"]


def test_fastapi_endpoint_answers_json_and_takes_query_params(web_env):
    status, headers, body = _request(f"{web_env.urls['hello']}/?name=ada")
    assert status == 200 and headers["content-type"] == "application/json", body
    assert json.loads(body)["greeting"] == "hello, ada"
    status, _, _ = _request(f"{web_env.urls['hello']}/", data=b"{}", method="POST")
    assert status == 405  # method="GET" only


def test_class_method_endpoint_runs_after_enter(web_env):
    status, _, body = _request(f"{web_env.urls['Model.predict']}/?x=5")
    assert status == 200 and json.loads(body) == {"y": 15}


# Each chunk and event carries the time.time() it was made at (one machine, one clock).


def test_asgi_app_streams_chunks_as_they_are_made(web_env):
    url = f"{web_env.urls['streamer']}/count?n=3&delay=0.3"
    chunks = []  # (index, made at, arrived at)
    with urllib.request.urlopen(url, timeout=60) as resp:
        assert resp.headers.get("transfer-encoding") == "chunked"
        for line in resp:
            _, index, _, made = line.decode().split()
            chunks.append((int(index), float(made), time.time()))
    assert [index for index, _, _ in chunks] == [0, 1, 2]
    # Buffered, the first chunk could only arrive once the last was made.
    assert chunks[0][2] < chunks[-1][1], f"the first chunk waited for the last: {chunks}"


def test_server_sent_events_arrive_one_by_one(web_env):
    events = []  # (index, made at, arrived at)
    with urllib.request.urlopen(f"{web_env.urls['streamer']}/events?n=3", timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp:
            if line.startswith(b"data: "):
                _, index, made = line.decode().split()
                events.append((int(index), float(made), time.time()))
    assert [index for index, _, _ in events] == [0, 1, 2]
    assert events[0][2] < events[-1][1], f"the events came together, buffered: {events}"


def test_websocket_echoes_both_ways_and_closes(web_env):
    import asyncio

    import aiohttp

    async def talk() -> tuple[list[str], int | None]:
        url = web_env.urls["streamer"].replace("http://", "ws://") + "/ws"
        got = []
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            for word in ("one", "two", "three"):
                await ws.send_str(word)
                msg = await ws.receive(timeout=30)
                got.append(msg.data)
            await ws.send_str("bye")
            closing = await ws.receive(timeout=30)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
            return got, ws.close_code

    got, code = asyncio.run(talk())
    assert got == ["echo: one", "echo: two", "echo: three"]
    assert code == 4000


def test_asgi_app_gets_the_request_body_and_path(web_env):
    status, _, body = _request(f"{web_env.urls['streamer']}/echo", data=b"x" * 5000, method="POST")
    assert status == 200 and json.loads(body)["bytes"] == 5000


def test_wsgi_app(web_env):
    status, headers, body = _request(
        f"{web_env.urls['legacy']}/a/b?q=1", data=b"12345", method="PUT"
    )
    assert status == 200 and headers["X-Served-By"] == "wsgi"
    assert body == b"PUT /a/b?q=1 5\n"


def test_web_server_requests_are_relayed_to_its_port(web_env):
    status, _, body = _request(f"{web_env.urls['files']}/hello.txt")
    assert status == 200 and body == b"served by http.server\n"
    status, _, _ = _request(f"{web_env.urls['files']}/missing.txt")
    assert status == 404


def test_a_request_outliving_the_sync_window_is_redirected_to_its_result(web_env):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    base = web_env.urls["streamer"]
    try:
        opener.open(f"{base}/slow?seconds=3", timeout=30)
        raise AssertionError("expected a 303")
    except urllib.error.HTTPError as err:
        assert err.code == 303, err  # answered before the 3 s request was done
        location = err.headers["Location"]
    assert location.startswith("/__ketch/result/"), location
    status, _, body = _request(f"{base}{location}")  # waits (and follows 303s) until the result
    assert status == 200 and "pid" in json.loads(body)
    assert _request(f"{base}{location}")[0] == 404  # a result is fetched once
    # urllib follows the 303 by itself, as browsers and most clients do.
    status, _, body = _request(f"{base}/slow?seconds=2.5")
    assert status == 200 and "pid" in json.loads(body)


def test_proxy_auth(web_env):
    url = web_env.urls["private"]
    payload, json_type = b'{"x": 21}', {"Content-Type": "application/json"}
    status, _, body = _request(url, data=payload, headers=json_type)
    assert status == 401 and b"missing credentials" in body
    created = web_env.cli("token", "create").check()
    token_id = re.search(r"Token ID:\s+(\S+)", created.stdout).group(1)
    secret = re.search(r"Token secret:\s+(\S+)", created.stdout).group(1)
    status, _, body = _request(
        url, data=payload, headers={**json_type, "Modal-Key": token_id, "Modal-Secret": "ws-wrong"}
    )
    assert status == 401 and b"invalid credentials" in body
    good = {**json_type, "Modal-Key": token_id, "Modal-Secret": secret}
    status, _, body = _request(url, data=payload, headers=good)
    assert status == 200 and json.loads(body) == {"doubled": 42}
    assert token_id in web_env.cli("token", "list").check().stdout
    assert secret not in web_env.cli("token", "list").check().stdout
    web_env.cli("token", "delete", token_id).check()
    status, _, _ = _request(url, data=payload, headers=good)
    assert status == 401


def test_body_over_the_limit_is_413(web_env):
    status, _, body = _request(
        f"{web_env.urls['streamer']}/echo", data=b"x" * (1024 * 1024 + 1), method="POST"
    )
    assert status == 413 and b"1 MiB" in body


def test_failing_endpoints_answer_500(web_env):
    status, _, body = _request(f"{web_env.urls['streamer']}/boom")
    assert status == 500  # FastAPI's own answer to an exception
    status, _, body = _request(web_env.urls["broken"])
    assert status == 500 and b"ValueError: no response from this app" in body, body
    logs = web_env.cli("app", "logs", APP, timeout=20, allow_timeout=True)
    assert "the endpoint failed on purpose" in logs.output, logs.describe()


def test_scales_from_zero_with_concurrency_and_back_to_zero(web_env):
    assert web_env.wait_until(lambda: _containers(web_env) == 0, timeout=30), (
        "containers did not stop"
    )
    # Eight concurrent slow requests to a @concurrent(max_inputs=8) endpoint: one container.
    pids: list[int] = []

    def hit() -> None:
        status, _, body = _request(f"{web_env.urls['streamer']}/slow?seconds=1.5")
        assert status == 200
        pids.append(json.loads(body)["pid"])

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(pids) == 8 and len(set(pids)) == 1, pids
    # Two at once to a default endpoint (one input per container): two containers.
    hello_pids: list[int] = []

    def hello() -> None:
        pid = json.loads(_request(f"{web_env.urls['hello']}/?name=x")[2])["pid"]
        hello_pids.append(pid)

    both = [threading.Thread(target=hello) for _ in range(2)]
    for t in both:
        t.start()
    for t in both:
        t.join(60)
    assert len(hello_pids) == 2
    assert web_env.wait_until(lambda: _containers(web_env) == 0, timeout=30), (
        "did not scale back to zero"
    )


def test_get_web_url_and_a_redeploy_keeps_the_urls(web_env):
    code = (
        "import ketch\n"
        f"print('URL', ketch.Function.from_name({APP!r}, 'hello').get_web_url())\n"
        f"print('NONE', ketch.Function.from_name({APP!r}, 'hello').get_web_url() is None)\n"
    )
    proc = web_env.python("-c", code).check()
    assert f"URL {web_env.urls['hello']}" in proc.stdout, proc.describe()
    again = web_env.cli("deploy", "examples/web_endpoints.py", timeout=60).check()
    assert dict(re.findall(r"- (\S+) => (http://127\.0\.0\.1:\d+)", again.stdout)) == web_env.urls
    assert _request(f"{web_env.urls['hello']}/?name=b")[0] == 200


def test_ketch_run_serves_endpoints_while_it_runs(web_env):
    proc = web_env.cli("run", "examples/web_endpoints.py", timeout=90).check()
    assert "GOT {'greeting': 'hello, ketch'" in proc.stdout, proc.describe()
    assert re.search(r"web endpoint hello => http://127\.0\.0\.1:\d+", proc.stderr), proc.describe()


def test_stopped_app_serves_nothing(web_env):
    web_env.cli("app", "stop", APP).check()
    try:
        status, _, body = _request(web_env.urls["hello"])
    except urllib.error.URLError:
        return  # the port is closed
    assert status == 404, body
