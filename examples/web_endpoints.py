"""Web endpoints: a FastAPI function, a streaming ASGI app, a WSGI app and a private endpoint.

ketch deploy examples/web_endpoints.py           # prints each endpoint's URL
curl "$(URL of hello)?name=ada"                  # {"greeting": "hello, ada"}
curl -N "$(URL of streamer)/count?n=3"           # chunks arrive one by one
# ws://127.0.0.1:PORT/ws on the streamer's port echoes text frames ("bye" closes it)
ketch token create                               # for the private endpoint:
curl -H "Modal-Key: wk-..." -H "Modal-Secret: ws-..." -X POST -d '{"x": 2}' "$(URL of private)"

The endpoints scale from zero: the first request starts a container, and
containers stop after `scaledown_window` seconds without requests.
"""

import os
import time

import ketch

app = ketch.App("web-demo")


@app.function(scaledown_window=2)
@ketch.fastapi_endpoint()
def hello(name: str = "world") -> dict:
    return {"greeting": f"hello, {name}", "pid": os.getpid()}


@app.function(scaledown_window=2)
@ketch.fastapi_endpoint(method="POST", requires_proxy_auth=True)
def private(item: dict) -> dict:
    return {"doubled": item.get("x", 0) * 2}


@app.function(scaledown_window=2)
@ketch.concurrent(max_inputs=8)
@ketch.asgi_app()
def streamer():
    from fastapi import FastAPI, Request

    web = FastAPI()
    _add_streaming_routes(web)
    _add_websocket_route(web)

    @web.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        return {"bytes": len(body), "pid": os.getpid()}

    @web.get("/slow")
    async def slow(seconds: float = 1.0):
        import asyncio

        await asyncio.sleep(seconds)
        return {"pid": os.getpid()}

    @web.get("/boom")
    def boom():
        raise RuntimeError("the endpoint failed on purpose")

    return web


def _add_streaming_routes(web):
    """Routes whose responses reach the client piece by piece, as they are made."""
    from fastapi.responses import StreamingResponse

    @web.get("/count")
    def count(n: int = 3, delay: float = 0.3):
        def chunks():
            for i in range(n):
                yield f"chunk {i} at {time.time():.3f}\n"
                time.sleep(delay)

        return StreamingResponse(chunks(), media_type="text/plain")

    @web.get("/events")
    def events(n: int = 3):
        """Server-sent events: each event reaches the client as soon as it is made."""

        def stream():
            for i in range(n):
                yield f"event: tick\ndata: {i} {time.time():.3f}\n\n"
                time.sleep(0.3)

        return StreamingResponse(stream(), media_type="text/event-stream")


def _add_websocket_route(web):
    """A WebSocket at /ws that echoes text frames until the client says "bye"."""
    from fastapi import WebSocket, WebSocketDisconnect

    @web.websocket("/ws")
    async def echo_socket(socket: WebSocket):
        await socket.accept()
        try:
            while True:
                text = await socket.receive_text()
                if text == "bye":
                    await socket.close(code=4000, reason="bye")
                    return
                await socket.send_text(f"echo: {text}")
        except WebSocketDisconnect:
            pass


def _wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Served-By", "wsgi")])
    body = environ["wsgi.input"].read()
    return [
        f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']} {len(body)}\n".encode()
    ]


@app.function(scaledown_window=2)
@ketch.wsgi_app()
def legacy():
    return _wsgi


@app.function(scaledown_window=2)
@ketch.asgi_app()
def broken():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            raise ValueError("no response from this app")

    return app


@app.cls(scaledown_window=2)
class Model:
    """A web endpoint on a class: @enter runs once per container, before its first request."""

    @ketch.enter()
    def load(self):
        self.weights = {"bias": 10}

    @ketch.fastapi_endpoint()
    def predict(self, x: int = 0) -> dict:
        return {"y": x + self.weights["bias"]}


@app.function(scaledown_window=2)
@ketch.web_server(8765, startup_timeout=10)
def files():
    """Any HTTP server on the port: here Python's own, serving a small directory."""
    import pathlib
    import subprocess
    import sys
    import tempfile

    root = pathlib.Path(tempfile.mkdtemp())
    (root / "hello.txt").write_text("served by http.server\n")
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "8765",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
        ]
    )


@app.local_entrypoint()
def main():
    import json
    import urllib.request

    url = hello.get_web_url()
    print("hello is served at", url)
    with urllib.request.urlopen(f"{url}/?name=ketch", timeout=30) as resp:
        print("GOT", json.loads(resp.read()))
