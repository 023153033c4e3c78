"""``ketch.Sandbox`` end to end on the sandbox runtime (issue 16, first slice).

One script, run as a user would (``python script.py`` with ``with app.run():``),
drives every method built so far and prints a RESULT line per step; the tests
read them. Untrusted code in a sandbox gets the hardened container and no API
token: the last steps check what it can see.
"""

from __future__ import annotations

import socket
import textwrap

import pytest
from ketch_testing import SHOW, ExampleRun

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SCRIPT = SHOW + textwrap.dedent(
    """
    import sys
    import time

    import ketch
    from ketch.exception import InvalidError, NotFoundError, ResourceUnavailableError
    from ketch.sandbox import SandboxTerminatedError, SandboxTimeoutError

    app = ketch.App("sandbox-e2e")
    PORT = int(sys.argv[1])


    def run(sb, *args, **kw):
        p = sb.exec(*args, **kw)
        return [p.stdout.read(), p.stderr.read(), p.wait()]


    def stdin_round_trip(sb):
        p = sb.exec("python3", "-c", "import sys; print(sys.stdin.read().upper())")
        p.stdin.write("hello ")
        p.stdin.drain()
        p.stdin.write(b"sandbox")
        p.stdin.write_eof()
        return [p.stdout.read(), p.wait(), p.returncode]


    def lines_as_they_come(sb):
        p = sb.exec("sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done")
        start, seen = time.monotonic(), []
        for line in p.stdout:
            seen.append([line, round(time.monotonic() - start, 1)])
        return seen


    def at_once(sb):
        ps = [sb.exec("sh", "-c", f"sleep 0.5; echo {i}") for i in range(5)]
        start = time.monotonic()
        out = [p.stdout.read().strip() for p in ps]
        return [out, time.monotonic() - start < 2.0]


    def after_terminate(sb):
        sb.terminate()
        try:
            sb.wait()
            return "no error"
        except SandboxTerminatedError as exc:
            return ["SandboxTerminatedError", sb.returncode, str(exc)]


    def timed_out():
        sb = ketch.Sandbox.create(app=app, timeout=1)
        try:
            sb.wait()
            return "no error"
        except SandboxTimeoutError as exc:
            return ["SandboxTimeoutError", "timed out" in str(exc)]


    def main_command():
        sb = ketch.Sandbox.create("sh", "-c", "echo from main; echo oops >&2; exit 7", app=app)
        sb.wait()
        try:
            sb.exec("true")
            after = "ran"
        except InvalidError as exc:
            after = "InvalidError: " + str(exc)
        return [sb.returncode, sb.stdout.read(), sb.stderr.read(), after]


    def files(sb):
        sb.mkdir("/work/data", parents=True)
        with sb.open("/work/data/notes.txt", "w") as f:
            f.write("one\\n")
            f.write("two\\n")
        with sb.open("/work/data/notes.txt", "a") as f:
            f.write("three\\n")
        blob = bytes(range(256)) * 40000  # 10 MB: more than one request each way
        with sb.open("/work/data/blob.bin", "wb") as f:
            f.write(blob)
        seen = sb.exec("sh", "-c", "cat /work/data/notes.txt; wc -c < /work/data/blob.bin")
        out = [
            sb.open("/work/data/notes.txt").read(),
            sb.open("/work/data/blob.bin", "rb").read() == blob,
            seen.stdout.read(),
            sb.ls("/work/data"),
        ]
        errors = []
        for attempt in (
            lambda: sb.open("/work/missing.txt").read(),
            lambda: sb.rm("/work"),
            lambda: sb.ls("/work/data/notes.txt"),
            lambda: sb.open("relative.txt"),
            lambda: sb.open("/proc/sys/kernel/core_pattern", "w"),
        ):
            try:
                attempt()
                errors.append("no error")
            except Exception as exc:
                errors.append(type(exc).__name__)
        sb.rm("/work/data", recursive=True)
        return out + [errors, sb.ls("/work")]


    def filesystem(sb):
        import os
        import tempfile

        fs = sb.filesystem
        fs.make_directory("/srv/fs/deep")
        fs.write_text("/srv/fs/deep/a.txt", "héllo")
        fs.write_bytes("/srv/fs/b.bin", b"\\x00\\x01")
        local = tempfile.mkdtemp()
        with open(os.path.join(local, "up.txt"), "w") as fh:
            fh.write("uploaded")
        fs.copy_from_local(os.path.join(local, "up.txt"), "/srv/fs/up.txt")
        fs.copy_to_local("/srv/fs/deep/a.txt", os.path.join(local, "down.txt"))
        with open(os.path.join(local, "down.txt"), encoding="utf-8") as fh:
            down = fh.read()
        info = fs.stat("/srv/fs/deep/a.txt")
        out = [
            fs.read_text("/srv/fs/deep/a.txt"),
            fs.read_bytes("/srv/fs/b.bin") == b"\\x00\\x01",
            fs.read_text("/srv/fs/up.txt"),
            down,
            fs.list_files("/srv/fs"),
            [info["type"], info["size"], fs.stat("/srv/fs")["type"]],
        ]
        fs.remove("/srv/fs", recursive=True)
        try:
            fs.stat("/srv/fs")
            gone = "still there"
        except Exception as exc:
            gone = type(exc).__name__
        return out + [gone]


    def slow_reader(sb):
        # 100 MiB, read only after 2 s: more than the control plane holds unread (64 MiB),
        # so the command must have been paused, as a pipe's writer blocks, not dropped.
        p = sb.exec("head", "-c", str(100 << 20), "/dev/zero", text=False)
        time.sleep(2)
        data = p.stdout.read()
        return [len(data), data.count(0) == len(data), p.wait()]


    def app_info(named):
        import subprocess

        cli = "import sys; sys.argv[0] = 'ketch'; from ketch.cli.main import main; sys.exit(main())"
        argv = [sys.executable, "-c", cli, "app", "info", app.app_id]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        return [line for line in out.splitlines() if named.object_id in line]


    def node_limit():
        made = []
        try:
            while len(made) < 40:
                made.append(ketch.Sandbox.create(app=app))
            return "no limit"
        except ResourceUnavailableError as exc:
            return ["ResourceUnavailableError", len(made), str(exc)]
        finally:
            for extra in made:
                extra.terminate()


    def idle():
        sb = ketch.Sandbox.create(app=app, idle_timeout=1)
        started = time.monotonic()
        sb.exec("sleep", "2")  # a running command is activity
        try:
            sb.wait()
            return "no error"
        except SandboxTimeoutError as exc:
            return ["SandboxTimeoutError", time.monotonic() - started >= 2.5, "idle" in str(exc)]


    def cli_exec(sb):
        import subprocess

        cli = "import sys; sys.argv[0] = 'ketch'; from ketch.cli.main import main; sys.exit(main())"
        argv = [sys.executable, "-c", cli, "container", "exec", sb.object_id]
        done = subprocess.run(argv + ["sh", "-c", "echo out; echo err >&2; exit 4"],
                              capture_output=True, text=True, timeout=60)
        other = subprocess.run([sys.executable, "-c", cli, "container", "exec", "ta-x", "ls"],
                               capture_output=True, text=True, timeout=60)
        return [done.stdout, done.stderr, done.returncode, other.returncode, other.stderr]


    def unknown():
        try:
            ketch.Sandbox.from_id("sb-doesnotexist")
            return "found"
        except NotFoundError as exc:
            return "NotFoundError: " + str(exc)


    def no_app():
        try:
            ketch.Sandbox.create(app=ketch.App("never-run"))
            return "created"
        except InvalidError as exc:
            return "InvalidError: " + str(exc)


    # Code in a sandbox reads its agent's token (same uid, same pid namespace) and says
    # hello on the channel with it: the control plane must not hand it the agent's channel.
    HIJACK = (
        "import os, socket, sys\\n"
        "sys.path.insert(0, os.environ['KETCH_BUNDLE_DEPS'])\\n"
        "from ketch._wire import encode\\n"
        "raw = open('/proc/2/environ').read().split(chr(0))\\n"
        "env = dict(item.split('=', 1) for item in raw if '=' in item)\\n"
        "token = env.get('KETCH_SANDBOX_TOKEN', '')\\n"
        "s = socket.socket(socket.AF_UNIX)\\n"
        "s.connect('/.ketch/run/channel.sock')\\n"
        "s.settimeout(5)\\n"
        "s.sendall(encode({'t': 'hello', 'container_id': env['KETCH_CONTAINER_ID'], 'token': token}))\\n"
        "print('token-seen' if token else 'no-token', 'answered' if s.recv(64) else 'refused')\\n"
    )


    PROBE = (
        "import os, socket\\n"
        "print(sorted(k for k in os.environ if 'TOKEN' in k))\\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]))\\n"
        "s = socket.socket()\\n"
        "s.settimeout(3)\\n"
        "try:\\n"
        "    s.connect(('127.0.0.1', %d)); print('connected')\\n"
        "except OSError as e:\\n"
        "    print('OSError')\\n"
    )


    with app.run():
        sb = ketch.Sandbox.create(app=app, tags={"suite": "e2e"})
        show("echo", lambda: run(sb, "echo", "hello"))
        show("stderr_and_code", lambda: run(sb, "sh", "-c", "echo out; echo err >&2; exit 3"))
        show("workdir_env", lambda: run(sb, "sh", "-c", "pwd; echo $GREETING", workdir="/tmp",
                                         env={"GREETING": "hi"}))
        show("stdin", lambda: stdin_round_trip(sb))
        show("lines", lambda: lines_as_they_come(sb))
        show("at_once", lambda: at_once(sb))
        show("not_found", lambda: run(sb, "no-such-command"))
        show("exec_timeout", lambda: run(sb, "sleep", "30", timeout=1))
        show("state_kept", lambda: [run(sb, "sh", "-c", "echo kept > /tmp/state")[2],
                                    run(sb, "cat", "/tmp/state")[0]])
        show("listed", lambda: [s.object_id for s in ketch.Sandbox.list(tags={"suite": "e2e"})]
                               == [sb.object_id])
        show("from_id", lambda: ketch.Sandbox.from_id(sb.object_id).poll())
        named = ketch.Sandbox.create(app=app, name="worker-1")
        show("from_name", lambda: ketch.Sandbox.from_name("sandbox-e2e", "worker-1").object_id
                                  == named.object_id)
        show("tags", lambda: [named.set_tags({"role": "w"}), named.get_tags(),
                              [s.object_id for s in ketch.Sandbox.list(tags={"role": "w"})]
                              == [named.object_id]][1:])
        show("same_name", lambda: ketch.Sandbox.create(app=app, name="worker-1"))
        show("app_info", lambda: app_info(named))
        show("probe", lambda: run(sb, "python3", "-c", PROBE % PORT)[0].split())
        show("files", lambda: files(sb))
        show("hijack", lambda: run(sb, "python3", "-c", HIJACK))
        show("cli_exec", lambda: cli_exec(sb))
        show("filesystem", lambda: filesystem(sb))
        show("slow_reader", lambda: slow_reader(sb))
        blocked = ketch.Sandbox.create(app=app, block_network=True)
        show("blocked", lambda: run(blocked, "python3", "-c", PROBE % PORT)[0].split()[-1])
        show("node_limit", node_limit)
        show("terminate", lambda: after_terminate(sb))
        show("timeout", timed_out)
        show("idle", idle)
        show("main", main_command)
        show("unknown", unknown)
    show("no_app", no_app)
    """
)


@pytest.fixture(scope="module")
def run(sandbox_env, workdir_module):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    script = workdir_module / "sandbox_script.py"
    script.write_text(SCRIPT)
    try:
        done = sandbox_env.python(script, str(listener.getsockname()[1]), timeout=360)
    finally:
        listener.close()
    return ExampleRun.parse(done)


@pytest.fixture(scope="module")
def workdir_module(tmp_path_factory):
    return tmp_path_factory.mktemp("sandboxes")


def test_exec_output_exit_codes_workdir_and_env(run):
    assert run.value("echo") == ["hello\n", "", 0]
    assert run.value("stderr_and_code") == ["out\n", "err\n", 3]
    assert run.value("workdir_env") == ["/tmp\nhi\n", "", 0]
    assert run.value("not_found")[2] == 127 and "no-such-command" in run.value("not_found")[1]
    assert run.value("exec_timeout")[2] == 137  # killed after its 1 s


def test_stdin_lines_and_many_commands_at_once(run):
    assert run.value("stdin") == ["HELLO SANDBOX\n", 0, 0]
    lines = run.value("lines")
    assert [text for text, _ in lines] == ["line 1\n", "line 2\n", "line 3\n"]
    assert lines[0][1] < lines[2][1]  # each line as it came, not all at the end
    out, together = run.value("at_once")
    assert out == ["0", "1", "2", "3", "4"] and together


def test_lifetime_state_and_lookup(run):
    assert run.value("state_kept") == [0, "kept\n"]
    assert run.value("listed") is True
    assert run.value("from_id") is None  # still running
    assert run.value("from_name") is True
    assert run.value("tags") == [{"role": "w"}, True]
    assert "already has a running sandbox 'worker-1'" in run.error("same_name")
    (line,) = run.value("app_info")  # `ketch app info` lists the app's sandboxes
    assert "'worker-1'" in line and "role=w" in line, line
    name, returncode, message = run.value("terminate")
    assert name == "SandboxTerminatedError" and returncode == 137, message
    assert run.value("timeout") == ["SandboxTimeoutError", True]
    returncode, out, err, after = run.value("main")
    assert (returncode, out, err) == (7, "from main\n", "oops\n")
    assert after.startswith("InvalidError") and "exited with code 7" in after


def test_files_in_and_out(run):
    notes, blob_ok, seen, listed, errors, after = run.value("files")
    assert notes == "one\ntwo\nthree\n" and blob_ok and listed == ["blob.bin", "notes.txt"]
    assert seen == "one\ntwo\nthree\n10240000\n"  # what the sandbox's own commands see
    assert errors == [
        "SandboxFilesystemNotFoundError",
        "SandboxFilesystemDirectoryNotEmptyError",
        "SandboxFilesystemNotADirectoryError",
        "SandboxFilesystemError",  # a relative path
        "SandboxFilesystemError",  # /proc/sys is read-only in a container
    ], errors
    assert after == []


def test_code_in_a_sandbox_cannot_take_over_its_channel(run):
    out, err, code = run.value("hijack")
    assert out.split()[-1] == "refused", (out, err)
    assert run.value("echo") == ["hello\n", "", 0]


def test_the_filesystem_helpers(run):
    assert run.value("filesystem") == [
        "héllo",
        True,
        "uploaded",
        "héllo",
        ["b.bin", "deep", "up.txt"],
        ["file", 6, "dir"],
        "SandboxFilesystemNotFoundError",
    ]


def test_a_slow_reader_loses_no_output(run):
    assert run.value("slow_reader") == [100 << 20, True, 0]


def test_sandboxes_are_bounded_per_node(run):
    name, made, message = run.value("node_limit")
    assert name == "ResourceUnavailableError" and 0 < made < 40, message
    assert "max_containers_per_node" in message


def test_idle_timeout_counts_running_commands_as_activity(run):
    assert run.value("idle") == ["SandboxTimeoutError", True, True]


def test_ketch_container_exec_runs_a_command_in_a_sandbox(run):
    out, err, code, other_code, other_err = run.value("cli_exec")
    assert (out, err, code) == ("out\n", "err\n", 4)
    assert other_code != 0 and "no sandbox or running container 'ta-x'" in other_err


def test_bad_input_is_typed(run):
    assert run.value("unknown").startswith(
        "NotFoundError: no sandbox or running container 'sb-doesnotexist'"
    )
    assert "app.run()" in run.value("no_app")


def test_untrusted_code_gets_no_token_and_a_hardened_container(run):
    tokens, *rest = run.value("probe")
    # No token of any kind in a sandbox command's environment (it cannot call the API).
    assert tokens == "[]", run.value("probe")
    n_pids, network = rest[-2], rest[-1]
    assert int(n_pids) < 10  # its own pid namespace
    assert network == "connected"  # the host network, as asked ...
    assert run.value("blocked") == "OSError"  # ... and none with block_network
