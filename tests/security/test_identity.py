"""Identity on every request: attacks on the API from the network, other users and bad tokens.

Each test tries what an attacker would and checks the typed refusal, then that
the owner's normal use still works.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
from ketch_testing import frame as _frame
from ketch_testing import post_raw
from ketch_testing import read_frame as _read_frame

from ketch._wire import RPC_MAGIC

pytestmark = pytest.mark.timeout(60)


def _post(url: str, method: str, body: object, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return post_raw(f"{url}/rpc/{method}", msgpack.packb(body), headers, timeout=20)


def _owner(control_plane) -> str:
    return (control_plane.home / "token").read_text().strip()


def test_the_owner_token_is_private_and_the_home_too(control_plane):
    token = control_plane.home / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(control_plane.home.stat().st_mode) & 0o077 == 0
    assert len(_owner(control_plane)) > 40


def test_no_token_or_a_wrong_one_is_401_on_http(control_plane):
    for token in (None, "", "ko-guess", "kt-guess", "kc-guess"):
        status, reply = _post(control_plane.url, "Status", {}, token)
        assert status == 401 and reply["error"]["type"] == "AuthError", (token, reply)
    for method, body in (
        ("AppList", {}),
        ("ProxyTokenCreate", {}),
        ("ApiTokenCreate", {"role": "admin"}),
    ):
        status, reply = _post(control_plane.url, method, body)
        assert status == 401, (method, reply)
    req = urllib.request.Request(f"{control_plane.url}/blobs", data=b"x" * 100, method="PUT")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    with err.value:  # it holds the response and its socket
        assert err.value.code == 401
    # The owner still gets in.
    status, reply = _post(control_plane.url, "Status", {}, _owner(control_plane))
    assert status == 200 and "version" in reply


def test_frames_without_a_valid_token_are_401(control_plane):
    host, _, port = control_plane.url.removeprefix("http://").rpartition(":")
    for hello in (b"", _frame({"auth": "ko-wrong"})):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(RPC_MAGIC + hello + _frame({"m": "AppList", "b": {}}))
            reply = _read_frame(sock)
            assert reply["s"] == 401 and reply["r"]["error"]["type"] == "AuthError", reply


def test_before_a_valid_token_a_connection_may_send_only_a_small_frame(control_plane):
    """An unauthenticated peer cannot make the control plane hold a large frame (80 MiB is for callers)."""
    host, _, port = control_plane.url.removeprefix("http://").rpartition(":")
    for hello in (b"", _frame({"auth": "ko-wrong"})):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(RPC_MAGIC + hello + struct.pack(">I", 1 << 20))
            reply = _read_frame(sock)
            assert reply["s"] == 413 and "before a valid token" in reply["r"]["error"]["message"], (
                reply
            )
            assert sock.recv(1) == b""  # and the connection is closed


def test_api_tokens_have_roles_and_can_be_revoked(control_plane):
    owner = _owner(control_plane)
    status, made = _post(control_plane.url, "ApiTokenCreate", {"role": "invoke"}, owner)
    assert status == 200 and made["token"].startswith("kt-")
    invoke = made["token"]
    assert _post(control_plane.url, "Status", {}, invoke)[0] == 200
    for method, body in (
        ("AppList", {}),
        # Its reply also says which options this node cannot enforce (warnings).
        ("AppCreate", {"app_id": "ap-invoke", "name": "", "functions": []}),
        ("ObjectList", {"kind": "dict"}),
        ("ApiTokenCreate", {"role": "admin"}),
        ("SecretCreate", {"name": "x", "env": {"A": "1"}}),
    ):
        status, reply = _post(control_plane.url, method, body, invoke)
        assert status == 403 and reply["error"]["type"] == "PermissionDeniedError", (method, reply)
        assert method in reply["error"]["message"]
    _, deploy = _post(control_plane.url, "ApiTokenCreate", {"role": "deploy"}, owner)
    assert _post(control_plane.url, "AppList", {}, deploy["token"])[0] == 200
    assert _post(control_plane.url, "ApiTokenCreate", {"role": "admin"}, deploy["token"])[0] == 403
    status, listed = _post(control_plane.url, "ApiTokenList", {}, owner)
    assert {t["token_id"] for t in listed["tokens"]} >= {made["token_id"], deploy["token_id"]}
    assert all("token" not in t for t in listed["tokens"])  # only hashes are kept
    assert (
        _post(control_plane.url, "ApiTokenRevoke", {"token_id": made["token_id"]}, owner)[0] == 200
    )
    assert _post(control_plane.url, "Status", {}, invoke)[0] == 401
    assert _post(control_plane.url, "ApiTokenCreate", {"role": "root"}, owner)[0] == 400


def test_host_paths_need_the_unix_socket(control_plane, tmp_path):
    """Over TCP, even the owner's token cannot make the control plane read a local path."""
    spec = {
        "tag": "f",
        "module_name": "m",
        "qualname": "f",
        "image": {
            "version": 1,
            "layers": [],
            "notes": [],
            "mounts": [{"kind": "dir", "local_path": "/", "remote_path": "/host", "ignore": []}],
        },
    }
    body = {"app_id": "ap-hostroot", "name": "hostroot", "functions": [spec]}
    status, reply = _post(control_plane.url, "AppCreate", body, _owner(control_plane))
    assert status == 403 and reply["error"]["type"] == "PermissionDeniedError", reply
    assert "unix socket" in reply["error"]["message"]
    module = {
        "tag": "f",
        "module_name": "m",
        "qualname": "f",
        "module_file": "/etc/shadow",
        "root_dir": "/etc",
    }
    body = {"app_id": "ap-hostroot2", "name": "hostroot2", "functions": [module]}
    assert _post(control_plane.url, "AppCreate", body, _owner(control_plane))[0] == 403
    sock_path = json.loads((control_plane.home / "server.json").read_text())["socket"]
    # Nor on the socket bound into containers, even with the owner's token from the owner's
    # uid: an ordinary account's containers are that account (docs/rootless.md).
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(Path(sock_path).with_name("containers.sock")))
        sock.sendall(RPC_MAGIC + _frame({"auth": _owner(control_plane)}))
        sock.sendall(_frame({"m": "AppCreate", "b": body}))
        reply = _read_frame(sock)
        assert reply["s"] == 403 and "container's socket" in str(reply), reply
    # The same owner on the unix socket may (an ephemeral app with no functions that run).
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(sock_path)
        sock.sendall(RPC_MAGIC + _frame({"auth": _owner(control_plane)}))
        sock.sendall(
            _frame(
                {
                    "m": "AppCreate",
                    "b": {
                        "app_id": "ap-ok",
                        "name": "ok",
                        "functions": [
                            dict(module, root_dir=str(tmp_path), module_file=str(tmp_path / "m.py"))
                        ],
                    },
                }
            )
        )
        reply = _read_frame(sock)
        assert reply["s"] == 200, reply
        sock.sendall(_frame({"m": "AppStop", "b": {"app_id": "ap-ok"}}))
        assert _read_frame(sock)["s"] == 200


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user"
)
def test_another_local_user_gets_nothing(control_plane):
    """uid 65534 cannot read the token, reach the unix socket, or use the TCP port without a token."""
    info = json.loads((control_plane.home / "server.json").read_text())
    host, _, port = control_plane.url.removeprefix("http://").rpartition(":")
    probe = f"""
import socket, struct, urllib.request, urllib.error
out = []
try:
    open({str(control_plane.home / "token")!r}).read(); out.append("token:read")
except OSError as e: out.append("token:" + type(e).__name__)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({info["socket"]!r}); out.append("socket:connected")
except OSError as e: out.append("socket:" + type(e).__name__)
req = urllib.request.Request("{control_plane.url}/rpc/AppList", data=b"\\x80", method="POST")
try:
    urllib.request.urlopen(req, timeout=10); out.append("http:200")
except urllib.error.HTTPError as e: out.append("http:" + str(e.code))
t = socket.create_connection(({host!r}, {port}), timeout=10)
body = b"\\x82\\xa1m\\xa7AppList\\xa1b\\x80"
t.sendall({RPC_MAGIC!r} + struct.pack(">I", len(body)) + body)
print(" ".join(out), "AuthError" in t.recv(4096).decode("latin-1") and "frames:401" or "frames:open")
"""
    done = _as_nobody(probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "token:PermissionError",
        "socket:PermissionError",
        "http:401",
        "frames:401",
    ], done.stdout


def test_a_squatted_socket_directory_is_refused(tmp_path, monkeypatch):
    """Another user who creates the (predictably named) socket directory first does not get our sockets."""
    from ketch.worker import bubblewrap

    monkeypatch.setattr(bubblewrap.tempfile, "gettempdir", lambda: str(tmp_path))
    home = tmp_path / "home"
    path = bubblewrap.socket_dir(home)  # ours: made private
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.rmdir()
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)  # as a squatter would leave it open to swap files in
    with pytest.raises(PermissionError, match="not a private directory"):
        bubblewrap.socket_dir(home)
    path.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="not a private directory"):
        bubblewrap.socket_dir(home)
    if os.geteuid() == 0:
        path.unlink()
        path.mkdir(mode=0o700)
        os.chown(path, 65534, 65534)
        with pytest.raises(PermissionError, match="owner uid 65534"):
            bubblewrap.socket_dir(home)


def test_a_huge_body_is_413_and_not_held(control_plane):
    """A request body over the cap is refused before it is read into memory; the server still answers."""
    status, reply = _post(
        control_plane.url, "Status", {"pad": b"x" * (90 << 20)}, _owner(control_plane)
    )
    assert status == 413 and reply["error"]["type"] == "PayloadTooLargeError", reply
    host, _, port = control_plane.url.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            RPC_MAGIC + _frame({"auth": _owner(control_plane)}) + struct.pack(">I", 200 << 20)
        )
        reply = _read_frame(sock)
        assert reply["s"] == 413, reply
    assert _post(control_plane.url, "Status", {}, _owner(control_plane))[0] == 200


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_frames_behind_a_waiting_get_are_not_buffered_without_bound(control_plane):
    """Behind a blocking Queue.get, the server reads at most about one request's worth more."""
    owner = _owner(control_plane)
    host, _, port = control_plane.url.removeprefix("http://").rpartition(":")
    status, made = _post(control_plane.url, "ObjectEphemeral", {"kind": "queue"}, owner)
    assert status == 200, made
    before = _rss()
    chunk = _frame({"m": "Status", "b": {"pad": b"y" * (8 << 20)}})
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(RPC_MAGIC + _frame({"auth": owner}))
        sock.sendall(_frame({"m": "QueueGet", "b": {"object_id": made["object_id"], "wait": 20}}))
        sock.setblocking(False)
        deadline_chunks = 60  # 480 MiB offered
        for _ in range(deadline_chunks):
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except BlockingIOError:
                break
        grown = _rss() - before
    assert sent < 300 << 20, f"the server took {sent >> 20} MiB behind a waiting get"
    assert grown < 250 << 20, f"the control plane grew by {grown >> 20} MiB"
    assert _post(control_plane.url, "Status", {}, owner)[0] == 200


def test_token_cli_creates_lists_and_revokes_api_tokens(ketch_env):
    """`ketch token create --role invoke` prints a token once; with it a client may call, not deploy."""
    made = ketch_env.cli("token", "create", "--role", "invoke").check()
    token_id = next(w for w in made.stdout.split() if w.startswith("tk-"))
    token = next(w for w in made.stdout.split() if w.startswith("kt-"))
    listed = ketch_env.cli("token", "list").check().stdout
    assert token_id in listed and "invoke" in listed and token not in listed
    code = "import ketch\ntry:\n    ketch.Dict.from_name('x', create_if_missing=True)['k'] = 1\nexcept Exception as e:\n    print(type(e).__name__)"
    refused = ketch_env.python("-c", code, extra_env={"KETCH_TOKEN": token}).check()
    assert refused.stdout.strip() == "PermissionDeniedError", refused.describe()
    ketch_env.cli("token", "revoke", token_id).check()
    assert token_id not in ketch_env.cli("token", "list").check().stdout


def test_the_container_channel_wants_a_small_hello_and_a_valid_token(control_plane):
    """An unauthenticated peer of the container channel cannot make the server hold a large frame."""
    import asyncio

    from ketch._wire import decode

    channel = json.loads((control_plane.home / "server.json").read_text())["channel"]
    port = int(channel.rpartition(":")[2])

    async def probe() -> list[str]:
        out = []
        for payload in (
            struct.pack(">I", 512 << 20),
            _frame({"container_id": "ta-x", "token": "kc-guess"}),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)  # the server closes the connection
            out.append("closed" if not data else decode(data[4:]).get("t", "?"))
            writer.close()
        return out

    assert asyncio.run(probe()) == ["closed", "closed"]


def test_a_large_blob_upload_streams_to_disk(control_plane):
    """A 300 MiB PUT /blobs is written as it arrives: the control plane does not hold it."""
    import http.client

    host, _, port = control_plane.url.removeprefix("http://").rpartition(":")
    size, piece = 300 << 20, b"z" * (4 << 20)
    before = _rss()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("PUT", "/blobs")
    conn.putheader("Authorization", f"Bearer {_owner(control_plane)}")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    peak = 0
    for _ in range(size // len(piece)):
        conn.send(piece)
        peak = max(peak, _rss() - before)
    reply = conn.getresponse()
    assert reply.status == 200, reply.read()
    assert msgpack.unpackb(reply.read())["blob_id"].startswith("bl-")
    conn.close()
    assert peak < 150 << 20, f"the control plane grew by {peak >> 20} MiB during a 300 MiB upload"


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user"
)
def test_another_user_cannot_reach_a_sandbox_control_plane(sandbox_env, workdir):
    """With sandbox containers running, the sockets bound into them are 0666, but their directory (0700) and
    the user namespace's staging under /run/ketch (0710, group of the namespace) keep uid 65534 out.
    """
    app = workdir / "alive.py"
    app.write_text(
        "import ketch\napp = ketch.App('sec-alive')\n\n@app.function()\ndef f() -> int:\n    return 1\n\n"
        "@app.local_entrypoint()\ndef main():\n    print('RESULT', f.remote())\n"
    )
    assert "RESULT 1" in sandbox_env.cli("run", app, timeout=120).check().stdout
    info = json.loads((sandbox_env.home / "server.json").read_text())
    staged = (
        sorted(p for p in Path("/run/ketch").glob("*/*") if p.is_dir())
        if Path("/run/ketch").is_dir()
        else []
    )
    if (
        "root inside is host uid" in sandbox_env.rpc("Status")["isolation"]
    ):  # a user namespace: the sockets bound into containers are 0666
        containers_sock = Path(info["socket"]).with_name("containers.sock")
        assert staged and stat.S_IMODE(os.stat(containers_sock).st_mode) == 0o666, staged
    sockets = [
        Path(info["socket"]).with_name(n) for n in ("api.sock", "containers.sock", "channel.sock")
    ]
    probe = f"""
import os, socket
out = []
for path in {[str(p) for p in sockets]!r}:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path); out.append("connected")
    except OSError as e: out.append(type(e).__name__)
for path in {[str(p) for p in staged]!r}:
    try:
        os.listdir(path); out.append("listed " + path)
    except OSError as e: out.append(type(e).__name__)
print(" ".join(out))
"""
    done = _as_nobody(probe)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"PermissionError"}, done.stdout


def _as_nobody(probe: str) -> subprocess.CompletedProcess[str]:
    """Run the Python ``probe`` as another local user (nobody), with no groups."""
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(
        [*argv, "/usr/bin/python3", "-I", "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


NEW_METHODS = (  # issue 16: containers and sandboxes (a container: its own app's sandboxes)
    ("ContainerList", {}),
    ("ContainerLogs", {"container_id": "ta-x"}),
    ("ContainerStop", {"container_id": "ta-x"}),
    ("NodeList", {}),
    ("InteractNext", {"app_id": "ap-x"}),
    ("SandboxCreate", {"app_id": "ap-x", "spec": {"tag": "s", "module_name": "", "qualname": "s"}}),
    ("SandboxList", {}),
    ("SandboxGet", {"sandbox_id": "sb-x"}),
    ("SandboxExec", {"sandbox_id": "sb-x", "argv": ["sh"]}),
    ("SandboxExecRead", {"sandbox_id": "sb-x", "exec_id": "main"}),
    ("SandboxExecWrite", {"sandbox_id": "sb-x", "exec_id": "main", "data": b"x"}),
    ("SandboxFile", {"sandbox_id": "sb-x", "op": "read", "path": "/etc/shadow"}),
    ("SandboxTerminate", {"sandbox_id": "sb-x"}),
    ("SandboxWaitReady", {"sandbox_id": "sb-x"}),
    ("SandboxTunnels", {"sandbox_id": "sb-x"}),
    ("SandboxSnapshot", {"sandbox_id": "sb-x"}),
    ("SandboxExecResize", {"sandbox_id": "sb-x", "exec_id": "main", "rows": 2, "cols": 2}),
)


def test_containers_and_sandboxes_need_an_owner_or_deploy_token(control_plane):
    """No token: 401; an invoke token: 403 (the role table); a container reaches only the
    Sandbox ones, for its own app's sandboxes (tests/security/test_container_api.py); a
    deploy token gets past authorization (404: no such id)."""
    from ketch.server import auth

    owner = _owner(control_plane)
    invoke = _post(control_plane.url, "ApiTokenCreate", {"role": "invoke"}, owner)[1]["token"]
    deploy = _post(control_plane.url, "ApiTokenCreate", {"role": "deploy"}, owner)[1]["token"]
    for method, body in NEW_METHODS:
        assert method not in auth.INVOKE_METHODS
        assert (method in auth.CONTAINER_METHODS) == method.startswith("Sandbox"), method
        assert _post(control_plane.url, method, body)[0] == 401, method
        status, reply = _post(control_plane.url, method, body, invoke)
        assert status == 403 and reply["error"]["type"] == "PermissionDeniedError", (method, reply)
    assert _post(control_plane.url, "ContainerList", {}, deploy)[0] == 200
    assert _post(control_plane.url, "SandboxGet", {"sandbox_id": "sb-x"}, deploy)[0] == 404


def test_only_a_container_opens_a_tunnel_and_only_to_itself(control_plane):
    """TunnelOpen names no container: the caller's own container token is the only way to
    say which, so no other token (the owner's included) can open a port of any container."""
    owner = _owner(control_plane)
    invoke = _post(control_plane.url, "ApiTokenCreate", {"role": "invoke"}, owner)[1]["token"]
    assert _post(control_plane.url, "TunnelOpen", {"port": 22})[0] == 401
    assert _post(control_plane.url, "TunnelOpen", {"port": 22}, invoke)[0] == 403
    status, reply = _post(control_plane.url, "TunnelOpen", {"port": 22, "container_id": "x"}, owner)
    assert status == 400 and "inside a ketch container" in reply["error"]["message"], reply


def test_a_guessed_tunnel_connection_on_the_channel_port_is_closed(control_plane):
    """Any local user can reach the channel's loopback port: a tunnel hello with an id the
    control plane did not hand out (one-use, random) is closed at once, relaying nothing."""
    import json
    import socket

    from ketch._wire import encode

    info = json.loads((control_plane.home / "server.json").read_text())
    host, port = info["channel"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(encode({"t": "tunnel", "id": "guessed"}) + b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(100) == b""  # closed, nothing relayed
