"""A sandbox serving HTTP, reached through a tunnel.

    ketch run examples/sandbox_http_tunnel.py

The sandbox runs a web server on port 8000 with ``block_network=True``: it can
reach nothing, yet its port is reachable through the tunnel ketch opens for
``encrypted_ports=[8000]`` (connections are relayed through the control plane,
not the network). A readiness probe says when the server accepts connections;
``sb.tunnels()`` gives the URL.
"""

import json
import urllib.request

import ketch

app = ketch.App("sandbox-http-tunnel")

SERVER = r"""
import http.server, json
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "served_by": "sandbox"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
"""


@app.local_entrypoint()
def main():
    sb = ketch.Sandbox.create(
        "python3",
        "-c",
        SERVER,
        app=app,
        block_network=True,
        encrypted_ports=[8000],
        readiness_probe=ketch.Probe.with_tcp(8000),
        timeout=120,
    )
    try:
        sb.wait_until_ready(timeout=60)
        tunnel = sb.tunnels()[8000]
        print(f"the sandbox's port 8000 is at {tunnel.url}")
        replies = [
            json.loads(urllib.request.urlopen(f"{tunnel.url}/item/{i}", timeout=10).read())
            for i in range(3)
        ]
        outbound = sb.exec(
            "python3",
            "-c",
            "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)",
        )
        blocked = outbound.wait() != 0
    finally:
        sb.terminate()
    for reply in replies:
        print(reply)
    value = {"paths": [r["path"] for r in replies], "outbound_blocked": blocked}
    print("RESULT " + json.dumps({"step": "http_tunnel", "value": value}))
