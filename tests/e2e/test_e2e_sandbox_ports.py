"""Sandboxes, second slice (issue 16): readiness probes, tunnels and ``ketch.forward``,
terminals (``pty``, ``ketch shell``, ``ketch container exec --pty``), exec ``secrets=``,
and ``snapshot_filesystem``, end to end on the sandbox runtime.

One script, run as a user would, prints a RESULT line per step; the terminal
steps drive the real CLI on a pseudo-terminal with pexpect.
"""

from __future__ import annotations

import textwrap

import pytest
from ketch_testing import SHOW, ExampleRun

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SCRIPT = SHOW + textwrap.dedent(
    """
    import os
    import sys
    import time
    import urllib.request

    import ketch
    from ketch.exception import InvalidError

    app = ketch.App("sandbox-ports-e2e")
    HERE = sys.argv[1] if __name__ == "__main__" else ""
    KETCH = os.path.join(os.path.dirname(sys.executable), "ketch")  # the venv's, off PATH in CI


    @app.function(secrets=[ketch.Secret.from_dict({"FN_SECRET": "fn-secret"})])
    def forwarded(seconds):
        import http.server
        import socketserver
        import threading

        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"hello through forward")

            def log_message(self, *args):
                pass

        server = socketserver.TCPServer(("127.0.0.1", 0), Hello)  # a free port
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with ketch.forward(server.server_address[1]) as tunnel:
            urls.put(tunnel.url)
            time.sleep(seconds)
        return "done"


    @app.function()
    def sandbox_from_a_function():
        sb = ketch.Sandbox.create()  # no app=: the function's own, as in Modal
        out = sb.exec("echo", "made-in-a-function").stdout.read()
        listed = [s.object_id for s in ketch.Sandbox.list()]
        sb.terminate()
        sb.detach()
        return [out, sb.object_id in listed]


    @app.function()
    def sleeper(seconds):
        open("/tmp/marker", "w").write("inside-the-function")
        time.sleep(seconds)
        return "slept"


    def into_a_function_container():
        import subprocess

        import pexpect  # here: the app's containers import this file

        call = sleeper.spawn(8)
        ids = []
        for _ in range(300):
            listed = subprocess.run([KETCH, "container", "list", "--app", app.name],
                                    capture_output=True, text=True).stdout
            ids = [line.split()[0] for line in listed.splitlines()[1:]
                   if "sleeper" in line and "running" in line]
            if ids:
                break
            time.sleep(0.1)
        container_id = ids[0]
        time.sleep(1)  # its function has written the marker
        done = subprocess.run([KETCH, "container", "exec", container_id,
                               "sh", "-c", "cat /tmp/marker; exit 4"],
                              capture_output=True, text=True, timeout=60)
        child = pexpect.spawn(KETCH, ["shell", container_id], encoding="utf-8", timeout=60)
        child.expect(r"[#$] ")
        child.sendline("cat /tmp/marker")
        child.expect("inside-the-function")
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
        try:
            ketch.Sandbox.from_id(container_id).terminate()
            refused = "terminated"
        except InvalidError as exc:
            refused = "InvalidError: " + str(exc)
        listed = [s.object_id for s in ketch.Sandbox.list()]
        return [container_id[:3], done.stdout, done.returncode, child.exitstatus,
                "ketch container stop" in refused, container_id in listed, call.get()]


    def get(url):
        return urllib.request.urlopen(url, timeout=10).read().decode()


    def http_through_tunnel():
        # block_network: the port is reached through the container's channel, not its network.
        sb = ketch.Sandbox.create(
            "python3", "-m", "http.server", "8000", "--directory", "/etc",
            app=app, block_network=True,
            readiness_probe=ketch.Probe.with_tcp(8000), encrypted_ports=[8000],
        )
        start = time.monotonic()
        sb.wait_until_ready(timeout=60)
        ready_s = time.monotonic() - start
        tunnels = sb.tunnels()
        tunnel = tunnels[8000]
        body = get(tunnel.url + "/")
        many = [get(tunnel.url + "/hostname") for _ in range(5)]
        sb.terminate()
        sb.wait(raise_on_termination=False)
        try:
            get(tunnel.url + "/")
            after = "still open"
        except OSError:
            after = "closed"
        return [list(tunnels), tunnel.url.startswith("http://127.0.0.1:"),
                tunnel.tcp_socket == (tunnel.host, tunnel.port), "os-release" in body,
                len(set(many)) == 1, ready_s < 30, after]


    def nothing_listening():
        sb = ketch.Sandbox.create(app=app, unencrypted_ports=[9000])
        tunnel = sb.tunnels()[9000]
        import socket
        s = socket.create_connection((tunnel.host, tunnel.port), timeout=10)
        s.settimeout(15)
        got = s.recv(10)
        s.close()
        sb.terminate()
        return got.decode()


    def exec_probe():
        sb = ketch.Sandbox.create(app=app, readiness_probe=ketch.Probe.with_exec(
            "test", "-f", "/tmp/ready", interval_ms=50))
        out = []
        try:
            sb.wait_until_ready(timeout=1)
            out.append("ready too soon")
        except TimeoutError:
            out.append("TimeoutError")
        sb.exec("touch", "/tmp/ready").wait()
        sb.wait_until_ready(timeout=30)
        out.append("ready")
        sb.terminate()
        plain = ketch.Sandbox.create(app=app)
        try:
            plain.wait_until_ready(timeout=5)
        except InvalidError as exc:
            out.append("InvalidError: " + str(exc)[:70])
        plain.terminate()
        return out


    def exec_secrets(sb):
        secret = ketch.Secret.from_dict({"A": "from-secret", "B": "from-secret"})
        p = sb.exec("sh", "-c", "echo $A $B", secrets=[secret], env={"B": "from-env"})
        return [p.stdout.read(), p.wait()]


    def on_a_terminal(sb):
        p = sb.exec("sh", "-c", "tty; stty size; [ -t 0 ] && echo stdin-is-a-tty",
                    pty={"rows": 30, "cols": 100})
        first = [p.stdout.read().replace("\\r", ""), p.wait()]
        p = sb.exec("python3", "-c", "print('got', input())", pty=True)
        p.stdin.write("typed\\n")
        p.stdin.drain()
        second = [p.stdout.read().replace("\\r", ""), p.wait()]
        return first + second


    def snapshot():
        sb = ketch.Sandbox.create(app=app)
        sb.exec("sh", "-c", "mkdir -p /srv && echo kept > /srv/state && rm /etc/issue && "
                "cp /bin/sh /srv/suid-sh && chmod 4755 /srv/suid-sh && chmod 750 /srv").wait()
        image = sb.snapshot_filesystem()
        sb.terminate()
        again = ketch.Sandbox.create(app=app, image=image)
        p = again.exec("sh", "-c", "cat /srv/state; test -e /etc/issue || echo issue-gone; "
                       "stat -c %a /srv/suid-sh /srv")
        seen = [p.stdout.read(), p.wait()]
        again.terminate()
        return [repr(image).startswith("Image(debian_slim -> snapshot")] + seen


    def snapshot_for_functions():
        sb = ketch.Sandbox.create(app=app)
        sb.exec("sh", "-c", "echo from-snapshot > /srv-data.txt").wait()
        image = sb.snapshot_filesystem()
        sb.terminate()
        fn_app = ketch.App("sandbox-snapshot-fn")
        reader = fn_app.function(image=image, serialized=True)(lambda: open("/srv-data.txt").read())
        with fn_app.run():
            return reader.remote()


    def forward_in_a_function():
        call = forwarded.spawn(5)
        url = urls.get(timeout=120)
        body = get(url)
        done = call.get(timeout=60)
        try:
            get(url)
            after = "still open"
        except OSError:
            after = "closed"
        return [body, done, after]


    def error_of(fn):
        try:
            fn()
            return "no error"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"


    def allowlist():
        import socket
        import threading

        host = socket.socket()
        host.bind(("127.0.0.1", 0))  # on this machine's loopback: 10.0.2.2 from a sandbox
        host.listen(8)

        def answer():
            while True:
                try:
                    conn, _ = host.accept()
                except OSError:
                    return
                conn.sendall(b"hello-host")
                conn.close()

        threading.Thread(target=answer, daemon=True).start()
        probe = (
            "import socket\\n"
            "try:\\n"
            f"    s = socket.create_connection(('10.0.2.2', {host.getsockname()[1]}), timeout=5)\\n"
            "    print(s.recv(20).decode())\\n"
            "except OSError as e:\\n"
            "    print('refused', type(e).__name__)\\n"
        )
        # No CAP_NET_ADMIN inside: its interface (and so its firewall) cannot be touched.
        admin = (
            "import fcntl, socket, struct\\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\\n"
            "try:\\n"
            "    fcntl.ioctl(s, 0x8914, struct.pack('16sH22x', b'tap0', 0))\\n"
            "    print('interface down')\\n"
            "except PermissionError:\\n"
            "    print('EPERM')\\n"
        )
        allowed = ketch.Sandbox.create(app=app, outbound_cidr_allowlist=["10.0.2.2/32"])
        other = ketch.Sandbox.create(app=app, outbound_cidr_allowlist=["192.0.2.0/24"])
        try:
            return [
                allowed.exec("python3", "-c", probe).stdout.read().strip(),
                other.exec("python3", "-c", probe).stdout.read().strip(),
                allowed.exec("python3", "-c", admin).stdout.read().strip(),
                allowed.exec("python3", "-c", probe).stdout.read().strip(),
                allowed.exec("cat", "/etc/resolv.conf").stdout.read(),
            ]
        finally:
            allowed.terminate()
            other.terminate()
            host.close()


    def forward_outside():
        with ketch.forward(8000):
            return "no error"


    def bad_ports():
        return ketch.Sandbox.create(app=app, encrypted_ports=[70000])


    def shell_in_sandbox(sb):
        import pexpect  # here: the app's containers import this file

        child = pexpect.spawn(KETCH, ["shell", sb.object_id], encoding="utf-8", timeout=60,
                              dimensions=(33, 111))
        child.expect(r"[#$] ")
        child.sendline("stty size; echo marker-$((6*7))")
        child.expect("marker-42")
        size = "33 111" in child.before
        child.sendline("sleep 60")
        time.sleep(1)
        child.sendcontrol("c")  # reaches the command inside, not ketch
        child.expect(r"[#$] ")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
        child.close()
        return [size, child.exitstatus]


    def container_exec_pty(sb):
        import pexpect  # here: the app's containers import this file

        child = pexpect.spawn(KETCH, ["container", "exec", "--pty", sb.object_id, "python3", "-q"],
                              encoding="utf-8", timeout=60)
        child.expect(">>> ")
        child.sendline("print(6 * 7)")
        child.expect("42")
        child.sendline("import sys; sys.exit(9)")
        child.expect(pexpect.EOF)
        child.close()
        return child.exitstatus


    def shell_of_function():
        import pexpect  # here: the app's containers import this file

        child = pexpect.spawn(KETCH, ["shell", f"{HERE}::forwarded"], encoding="utf-8",
                              timeout=120, cwd=HERE.rsplit("/", 1)[0])
        child.expect(r"[#$] ")
        child.sendline("echo secret=$FN_SECRET; ls /root")
        child.expect("secret=fn-secret")
        child.expect(r"[#$] ")
        source_there = "sandbox_ports_script.py" in child.before
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
        return [source_there, child.exitstatus]


    if __name__ == "__main__":
        urls = ketch.Queue.from_name("sandbox-ports-urls", create_if_missing=True)
        with app.run():
            sb = ketch.Sandbox.create(app=app)
            show("tunnel", http_through_tunnel)
            show("nothing_listening", nothing_listening)
            show("exec_probe", exec_probe)
            show("exec_secrets", lambda: exec_secrets(sb))
            show("pty", lambda: on_a_terminal(sb))
            show("snapshot", snapshot)
            show("snapshot_fn", snapshot_for_functions)
            show("forward", forward_in_a_function)
            show("bad_ports", bad_ports)
            show("allowlist", allowlist)
            show("allowlist_bad", lambda: [
                error_of(lambda: ketch.Sandbox.create(app=app, outbound_cidr_allowlist=["nope"])),
                error_of(lambda: ketch.Sandbox.create(
                    app=app, outbound_cidr_allowlist=["10.0.0.0/8"], block_network=True)),
                error_of(lambda: ketch.Sandbox.create(app=app, outbound_cidr_allowlist=["::1/128"])),
                error_of(lambda: ketch.Sandbox.create(
                    app=app, outbound_domain_allowlist=["example.com"])),
            ])
            show("from_a_function", sandbox_from_a_function.remote)
            show("shell_sb", lambda: shell_in_sandbox(sb))
            show("exec_pty", lambda: container_exec_pty(sb))
            show("function_container", into_a_function_container)
            sb.terminate()
            left = ketch.Sandbox.create("sleep", "600", app=app)  # not terminated by the script
        show("app_stopped", lambda: left.wait())
        show("forward_outside", forward_outside)
        show("shell_fn", shell_of_function)
    else:
        urls = ketch.Queue.from_name("sandbox-ports-urls", create_if_missing=True)
    """
)


@pytest.fixture(scope="module")
def run(sandbox_env, tmp_path_factory):
    script = tmp_path_factory.mktemp("sandbox-ports") / "sandbox_ports_script.py"
    script.write_text(SCRIPT)
    return ExampleRun.parse(sandbox_env.python(script, str(script), timeout=360))


def test_a_readiness_probe_and_a_tunnel_reach_a_server_in_a_sandbox(run):
    ports, loopback, tcp_socket, body, same, quick, after = run.value("tunnel")
    assert ports == [8000] and loopback and tcp_socket and body and same and quick
    assert after == "closed"  # the tunnel went with its sandbox
    assert run.value("nothing_listening") == ""  # closed at once, no hang
    probe = run.value("exec_probe")
    assert probe[:2] == ["TimeoutError", "ready"]
    assert probe[2].startswith("InvalidError: sandbox") and "no readiness probe" in probe[2]
    assert "between 1 and 65535" in run.error("bad_ports")


def test_functions_make_sandboxes_of_their_own_app_and_outbound_allowlists_hold(run):
    assert run.value("from_a_function") == ["made-in-a-function\n", True]
    # Allowed: the host (10.0.2.2); not allowed: refused; the firewall holds against root inside.
    assert run.value("allowlist") == [
        "hello-host",
        "refused ConnectionRefusedError",
        "EPERM",
        "hello-host",
        "nameserver 10.0.2.3\n",
    ]
    bad = run.value("allowlist_bad")
    assert bad[0].startswith("InvalidError") and "is not a network like" in bad[0]
    assert bad[1].startswith("InvalidError") and "cannot be used with block_network" in bad[1]
    assert bad[2].startswith("InvalidError") and "IPv6" in bad[2]
    assert bad[3].startswith("InvalidError") and "by domain or source" in bad[3]


def test_forward_exposes_a_port_of_a_function_while_its_block_runs(run):
    assert run.value("forward") == ["hello through forward", "done", "closed"]
    assert "inside a ketch container" in run.error("forward_outside")


def test_exec_secrets_and_commands_on_a_terminal(run):
    assert run.value("exec_secrets") == ["from-secret from-env\n", 0]
    first, code, second, code2 = run.value("pty")
    assert first.startswith("/dev/pts/") and "30 100\n" in first and "stdin-is-a-tty" in first
    assert code == 0 and code2 == 0
    assert "got typed" in second


def test_a_snapshot_is_an_image_for_sandboxes_and_functions(run):
    # Kept: files, deletions, modes; dropped: the set-user-ID bit untrusted code set.
    assert run.value("snapshot") == [True, "kept\nissue-gone\n755\n750\n", 0]
    assert run.value("snapshot_fn") == "from-snapshot\n"


def test_ketch_shell_and_container_exec_pty_on_a_real_terminal(run):
    assert run.value("shell_sb") == [True, 5]  # window size, Ctrl-C inside, exit code out
    assert run.value("exec_pty") == 9
    assert run.value("shell_fn") == [True, 0]  # the function's Secret and source


def test_a_sandbox_ends_with_its_app(run):
    assert "SandboxTerminatedError" in run.error("app_stopped")
    assert "its app stopped" in run.error("app_stopped")


def test_commands_and_a_shell_in_a_running_function_container(run):
    # Its own files, the command's exit code; not a sandbox: not listed, not terminated.
    assert run.value("function_container") == [
        "ta-",
        "inside-the-function",
        4,
        0,
        True,
        False,
        "slept",
    ]


KILLED = textwrap.dedent(
    """
    import sys, time
    import ketch

    app = ketch.App("sandbox-kill9")
    with app.run():
        sb = ketch.Sandbox.create("sleep", "1000", app=app)
        other = ketch.Sandbox.create(app=app, encrypted_ports=[8000])
        p = other.exec("sh", "-c", "trap '' TERM; echo ready; sleep 1000")
        print("READY", sb.object_id, p.stdout.lines().__next__().strip(), flush=True)
        time.sleep(600)
    """
)


@pytest.mark.timeout(180)
def test_a_killed_control_plane_leaves_no_sandbox_behind(tmp_path):
    """kill -9 of the control plane: every process of its sandboxes goes with it (bubblewrap's
    --die-with-parent), even a command that ignores SIGTERM; none is left orphaned."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from ketch_testing import KetchEnv, _descendants, _proc_table, wait_until

    from ketch.worker import isolate

    if not isolate.support().ok:
        pytest.skip(f"the sandbox runtime cannot run here: {isolate.support().reason}")
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-kill9-", dir="/tmp"))
    env = KetchEnv(home, runtime="sandbox")
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    run = None
    try:
        run = subprocess.Popen(
            [sys.executable, str(script)], env=env.env, stdout=subprocess.PIPE, text=True
        )
        line = run.stdout.readline()
        assert line.startswith("READY"), line
        server = env.server_pid()
        sandboxed = _descendants(server, _proc_table())
        assert len(sandboxed) >= 4  # two bubblewraps, their agents, the commands
        os.kill(server, signal.SIGKILL)
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in sandboxed), 30), [
            p for p in sandboxed if os.path.exists(f"/proc/{p}")
        ]
    finally:
        if run is not None:
            run.kill()
            run.wait()
            run.stdout.close()
        env.close()
        shutil.rmtree(home, ignore_errors=True)
        from ketch.worker.bubblewrap import socket_dir

        shutil.rmtree(socket_dir(home), ignore_errors=True)  # what a killed one leaves
