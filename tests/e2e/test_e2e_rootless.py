"""The sandbox runtime for an ordinary account: two accounts made for the test, no root.

Each account runs its own control plane through the real CLI, which moves into a
user namespace of its own (``worker/rootless.py``) with the account's
subordinate ids. Proved here: a ``debian_slim`` image with ``pip_install`` and
``apt_install`` builds (mmdebstrap, without root) and the function imports what
it installed; a container sees no host files and no host processes;
``block_network`` holds; a Secret arrives; a Volume commit is read back by the
CLI; a web endpoint answers; ``ketch server status`` says what is and is not
enforced; and the two accounts cannot see or touch each other's control plane,
containers, images, Volumes or Secrets.

The same checks as root are the other sandbox tests (tests/e2e/test_e2e_sandbox.py,
tests/security).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from ketch_testing import REPO, SHOW, ExampleRun, KetchEnv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import accounts  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.skipif(bool(accounts.missing()), reason=accounts.missing() or "ok"),
]

APP = """
import os
import socket
import subprocess

import ketch

app = ketch.App("rootless-demo")
image = ketch.Image.debian_slim().pip_install("six").apt_install("jq")
volume = ketch.Volume.from_name("rootless-vol", create_if_missing=True)
secret = ketch.Secret.from_dict({"ROOTLESS_SECRET": "s3cret"})


def dial(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"
    except OSError as exc:
        return f"OSError: {exc}"


def dial_abstract(name):
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect("\\0" + name)
            return "connected"
    except OSError as exc:
        return type(exc).__name__


@app.function(image=image, volumes={"/data": volume}, secrets=[secret])
def inside(paths, other_pid, port, abstract):
    import six

    jq = subprocess.run(["jq", "--version"], capture_output=True, text=True).stdout.strip()
    try:
        os.kill(other_pid, 0)
        signalled = "delivered"
    except OSError as exc:
        signalled = type(exc).__name__
    with open("/data/from-container.txt", "w") as fh:
        fh.write("written as " + str(os.getuid()))
    volume.commit()
    return {
        "uid": os.getuid(),
        "six": six.__version__,
        "jq": jq,
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "seen": {p: os.path.exists(p) for p in paths},
        "secret": os.environ.get("ROOTLESS_SECRET"),
        "signal": signalled,
        "dial": dial(port),
        "abstract": dial_abstract(abstract),
    }


@app.function(image=image, block_network=True)
def blocked(port):
    return dial(port)


@app.function(image=image)
@ketch.wsgi_app()
def web():
    def answer(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("uid %d" % os.getuid()).encode()]

    return answer


@app.local_entrypoint()
def main(paths: str, other_pid: int, port: int, abstract: str):
    show("inside", lambda: inside.remote(paths.split(","), other_pid, port, abstract))
    show("blocked", lambda: blocked.remote(port))
"""


# B's deployed app keeps a container running, for A to try to reach, and a schedule.
KEEPER = """

@app.function(image=image, min_containers=1)
def keeper():
    pass


ticks = ketch.Dict.from_name("rootless-ticks", create_if_missing=True)


@app.function(image=image, schedule=ketch.Period(seconds=1))
def tick():
    import time

    ticks[f"tick-{time.time()}"] = os.getuid()
"""


class AccountEnv(KetchEnv):
    """A ``KETCH_HOME`` of an ordinary account; every command runs as that account."""

    def __init__(self, account: accounts.Account) -> None:
        super().__init__(account.home / "ketch-home", runtime="sandbox")
        self.account = account
        self.env = account.env(self.env)

    def _run(self, args, timeout, cwd=None, extra_env=None, allow_timeout=False):
        return super()._run(
            self.account.command([str(a) for a in args]),
            timeout,
            cwd or self.account.home,
            extra_env,
            allow_timeout,
        )

    def status(self) -> str:
        return self.cli("server", "status", timeout=60).check().stdout


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.fixture(scope="module")
def two():
    """Accounts A and B, each with a sandbox control plane; B has a container running."""
    made: list[accounts.Account] = []
    envs: list[AccountEnv] = []
    groups: list[Path] = []
    try:
        for _ in range(2):
            made.append(accounts.Account.create())
            envs.append(AccountEnv(made[-1]))
        a, b = envs
        # A's administrator gave it a cgroup of its own; B has none.
        a.cgroup_parent = f"ketch-{a.account.name}"
        groups = a.account.delegate_cgroups(a.cgroup_parent)
        a.env["KETCH_CGROUP_PARENT"] = a.cgroup_parent
        app = b.account.write("app/rootless_app.py", SHOW + textwrap.dedent(APP) + KEEPER)
        b.deployed = b.cli("deploy", app, timeout=400).check()
        a.app = a.account.write("app/rootless_app.py", SHOW + textwrap.dedent(APP))
        yield a, b
    finally:
        for env in envs:
            env.close()
        for account in made:
            account.remove()
        accounts.undelegate(groups)


def _container_pids(env: AccountEnv) -> list[int]:
    """Processes of ``env``'s containers: the control plane's descendants that run Python."""
    pid = env.server_pid()
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True)
    rows = [line.split(None, 2) for line in out.stdout.splitlines() if line.strip()]
    children: dict[int, list[tuple[int, str]]] = {}
    for p, pp, args in (r for r in rows if len(r) == 3):
        children.setdefault(int(pp), []).append((int(p), args))
    found, frontier = [], [pid]
    while frontier:
        for child, args in children.get(frontier.pop(), []):
            frontier.append(child)
            if "ketch.guest" in args and "bwrap" not in args:
                found.append(child)
    return found


def test_an_ordinary_account_builds_images_and_runs_isolated_containers(two):
    a, b = two
    listener = _listener()
    # A host process's abstract unix socket (no file permissions guard one): the
    # container shares the host's network, and with it their names.
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0ketch-rootless-{os.getpid()}")
    abstract.listen(4)
    try:
        b_pid = b.server_pid()
        paths = [str(REPO), str(b.home), str(a.home), "/etc/ketch-host-only"]
        Path("/etc/ketch-host-only").write_text("host")
        run = ExampleRun.parse(
            a.cli(
                "run",
                a.app,
                "--paths",
                ",".join(paths),
                "--other-pid",
                str(b_pid),
                "--port",
                str(listener.getsockname()[1]),
                "--abstract",
                f"ketch-rootless-{os.getpid()}",
                timeout=400,
            )
        )
    finally:
        listener.close()
        abstract.close()
        Path("/etc/ketch-host-only").unlink(missing_ok=True)
    seen = run.value("inside")
    assert seen["six"] and seen["jq"].startswith("jq-"), seen  # images built without root
    assert seen["uid"] == 0  # root inside: the account outside
    assert not any(seen["seen"].values()), seen["seen"]  # no host files
    assert max(seen["pids"]) < 10, seen["pids"]  # its own pid namespace: no host processes
    assert seen["signal"] == "ProcessLookupError"  # B's control plane is not there to signal
    assert seen["secret"] == "s3cret"
    assert seen["dial"] == "connected"  # the host network, as asked ...
    assert run.value("blocked").startswith("OSError")  # ... and none with block_network
    assert seen["abstract"] == "PermissionError"  # Landlock: no host abstract sockets
    got = a.cli("volume", "get", "rootless-vol", "from-container.txt", "-", timeout=60).check()
    assert "written as 0" in got.stdout
    # What the account's files look like from the host: its own, or its subordinate ids'.
    layers = a.account.home / ".cache" / "ketch" / "images" / "layers"
    owners = {os.lstat(p).st_uid for p in layers.rglob("*") if p.is_file()}
    first = _subuid_start(a.account.name)
    assert owners and all(o == a.account.uid or first <= o < first + 65536 for o in owners)
    status = b.status()
    assert "rootless: root inside is " + b.account.name in status
    assert "NOT enforced" in status and f"no cgroup is delegated to {b.account.name}" in status


def test_a_delegated_cgroup_holds_an_ordinary_accounts_memory_limit(two):
    a, _ = two
    app = a.account.write(
        "app/limits_app.py",
        SHOW
        + textwrap.dedent(
            """
            import ketch

            app = ketch.App("rootless-limits")


            @app.function(image=ketch.Image.debian_slim().pip_install("six"), memory=(64, 128))
            def hog():
                block = bytearray(400 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                return "survived"


            @app.local_entrypoint()
            def main():
                show("hog", hog.remote)
            """
        ),
    )
    run = ExampleRun.parse(a.cli("run", app, timeout=300))
    assert "ran out of memory (limit 128 MiB)" in run.error("hog"), run.proc.describe()
    status = a.status()
    assert "limits enforced" in status and "memory" in status.split("cgroup", 1)[1], status


def test_a_web_endpoint_and_a_schedule_of_an_ordinary_account_work(two):
    _, b = two
    urls = dict(re.findall(r"- (\S+) => (http://127\.0\.0\.1:\d+)", b.deployed.stdout))
    with urllib.request.urlopen(urls["web"], timeout=120) as response:
        assert response.read() == b"uid 0"
    ticked = lambda: "tick-" in b.cli("dict", "items", "rootless-ticks", timeout=60).stdout  # noqa: E731
    assert b.wait_until(ticked, 60, interval=1.0), "the schedule never ran"


SANDBOX_APP = """
import urllib.request

import ketch

app = ketch.App("rootless-sandboxes")


def served():
    sb = ketch.Sandbox.create(
        "python3", "-m", "http.server", "8000", "--directory", "/etc", app=app,
        block_network=True, encrypted_ports=[8000], readiness_probe=ketch.Probe.with_tcp(8000))
    sb.wait_until_ready(timeout=60)
    body = urllib.request.urlopen(sb.tunnels()[8000].url + "/", timeout=10).read().decode()
    sb.terminate()
    return "os-release" in body


def terminal_and_snapshot():
    sb = ketch.Sandbox.create(app=app)
    tty = sb.exec("tty", pty=True).stdout.read().strip()
    sb.exec("sh", "-c", "echo kept > /kept && chmod 4755 /kept").wait()
    again = ketch.Sandbox.create(app=app, image=sb.snapshot_filesystem())
    seen = again.exec("sh", "-c", "cat /kept; stat -c %a /kept").stdout.read()
    sb.terminate()
    again.terminate()
    return [tty.startswith("/dev/pts/"), seen]


def allowlist():
    sb = ketch.Sandbox.create(app=app, outbound_cidr_allowlist=["192.0.2.0/24"])
    sb.terminate()
    return "created"


@app.local_entrypoint()
def main():
    show("served", served)
    show("terminal", terminal_and_snapshot)
    show("allowlist", allowlist)
"""


def test_an_ordinary_accounts_sandboxes_tunnel_take_terminals_and_snapshot(two):
    a, _ = two
    script = a.account.write("app/rootless_sandboxes.py", SHOW + textwrap.dedent(SANDBOX_APP))
    run = ExampleRun.parse(a.cli("run", script, timeout=300))
    assert run.value("served") is True  # a block_network sandbox's port, through its tunnel
    assert run.value("terminal") == [True, "kept\n755\n"]  # a pty; no set-user-ID kept
    # An allowlist needs /dev/net/tun open to the account (0666 on most distributions):
    # it works, or says what an administrator must do.
    if os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:  # (the account is not its owner)
        assert run.value("allowlist") == "created"
    else:
        assert "chmod 0666 /dev/net/tun" in run.error("allowlist")


def test_two_accounts_cannot_reach_each_other(two):
    a, b = two
    b_info = json.loads((b.home / "server.json").read_text())
    probe = textwrap.dedent(
        f"""
        import json, os, signal, socket, urllib.request, urllib.error
        out = {{}}
        for name, path in {{
            "token": {str(b.home / "token")!r},
            "state": {str(b.home / "state.db")!r},
            "images": {str(b.account.home / ".cache" / "ketch" / "images")!r},
            "volumes": {str(b.home / "volumes")!r},
        }}.items():
            try:
                (open if os.path.isfile(path) else os.listdir)(path)
                out[name] = "read"
            except OSError as exc:
                out[name] = type(exc).__name__
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect({b_info["socket"]!r})
            out["socket"] = "connected"
        except OSError as exc:
            out["socket"] = type(exc).__name__
        try:
            own = open({str(a.home / "token")!r}).read().strip()
            req = urllib.request.Request({b_info["url"] + "/rpc/AppList"!r}, data=b"\\x80",
                headers={{"Authorization": "Bearer " + own, "Content-Type": "application/msgpack"}})
            urllib.request.urlopen(req, timeout=10)
            out["api"] = "answered"
        except urllib.error.HTTPError as exc:
            out["api"] = exc.code
        out["environ"] = {{}}  # a container's environment holds its token and its Secrets
        for pid in {_container_pids(b)!r}:
            try:
                open(f"/proc/{{pid}}/environ", "rb").read()
                out["environ"][pid] = "read"
            except OSError as exc:
                out["environ"][pid] = type(exc).__name__
        out["kill"] = {{}}
        for pid in {[b_info["pid"], *_container_pids(b)]!r}:
            try:
                os.kill(pid, signal.SIGKILL)
                out["kill"][pid] = "killed"
            except OSError as exc:
                out["kill"][pid] = type(exc).__name__
        print("PROBE " + json.dumps(out))
        """
    )
    a.cli("server", "start", timeout=120).check()  # A has a control plane of its own too
    done = a.python("-c", probe, timeout=60).check()
    out = json.loads(done.stdout.split("PROBE ", 1)[1])
    assert out["kill"], "B has no container running"
    assert {out[k] for k in ("token", "state", "images", "volumes")} == {"PermissionError"}, out
    assert out["socket"] == "PermissionError", out
    assert out["api"] == 401, out  # A's token means nothing to B's control plane
    assert set(out["kill"].values()) == {"PermissionError"}, out
    assert out["environ"] and set(out["environ"].values()) == {"PermissionError"}, out
    assert b.pid_alive(b_info["pid"])
    # B's own view: its app is still there, and A's CLI pointed at B's home gets nowhere.
    assert b.app_record("rootless-demo") is not None
    stolen = a.cli("app", "list", timeout=60, extra_env={"KETCH_HOME": str(b.home)})
    assert stolen.returncode != 0, stolen.describe()


def _subuid_start(name: str) -> int:
    for line in Path("/etc/subuid").read_text().splitlines():
        user, start, _ = line.split(":")
        if user == name:
            return int(start)
    raise AssertionError(f"{name} has no subordinate ids")


# --- from_registry and from_dockerfile, pulled and built by an ordinary account ------------

REGISTRY_APP = """
from pathlib import Path

import ketch

app = ketch.App("rootless-registry")
pulled = ketch.Image.from_registry("{ref}")
built = ketch.Image.from_dockerfile(Path(__file__).resolve().parent / "Dockerfile")


def describe():
    import os
    owners = {{p: os.stat(p).st_gid for p in ("/etc/shadow", "/etc/passwd")}}
    ran = open("/opt/dock/run.txt").read().strip() if os.path.exists("/opt/dock/run.txt") else None
    return {{"FROM_REGISTRY": os.environ.get("FROM_REGISTRY"), "cwd": os.getcwd(),
             "owners": owners, "run": ran}}


@app.function(image=pulled)
def plain():
    return describe()


@app.function(image=built)
def dockerfile():
    return describe()


@app.local_entrypoint()
def main():
    show("plain", plain.remote)
    show("dockerfile", dockerfile.remote)
"""

DOCKERFILE = """\
FROM {ref}
WORKDIR /opt/dock
RUN echo "ran as $(id -u)" > run.txt && chown 42 run.txt
"""


@pytest.fixture(scope="module")
def registry_ref(tmp_path_factory):
    """The machine's Debian base (root's cache; built first if missing) in a local registry."""
    from ketch.image import Image
    from registry_util import local_registry, missing_tools, push_rootfs

    if missing := missing_tools():
        pytest.skip(f"registry tests need {', '.join(missing)} (scripts/system-deps)")
    cache = Path(os.environ.get("KETCH_IMAGE_CACHE", "~/.cache/ketch/images")).expanduser()
    base = cache / "layers" / Image.debian_slim().layers[0].hash / "fs"
    if not base.is_dir():
        home = tmp_path_factory.mktemp("root-home")
        env = KetchEnv(home, runtime="sandbox")
        try:
            app = home / "base_app.py"
            app.write_text(
                "import ketch\napp = ketch.App('base')\n@app.function()\ndef f():\n    return 1\n"
            )
            env.cli("run", f"{app}::f", timeout=400).check()
        finally:
            env.close()
    with local_registry(tmp_path_factory.mktemp("registry")) as host:
        ref = f"{host}/test/debian:rootless"
        asyncio.run(
            push_rootfs(base, ref, env={"FROM_REGISTRY": "yes"}, workdir="/srv", timeout=400)
        )
        yield ref


def test_an_ordinary_account_pulls_images_and_builds_dockerfiles(two, registry_ref):
    a, _ = two
    a.account.write("registry/Dockerfile", DOCKERFILE.format(ref=registry_ref))
    app = a.account.write(
        "registry/registry_app.py", SHOW + textwrap.dedent(REGISTRY_APP.format(ref=registry_ref))
    )
    run = ExampleRun.parse(a.cli("run", app, timeout=400))
    plain = run.value("plain")
    assert plain["FROM_REGISTRY"] == "yes" and plain["cwd"] == "/srv", plain
    assert plain["owners"] == {"/etc/shadow": 42, "/etc/passwd": 0}, plain  # group shadow kept
    built = run.value("dockerfile")
    assert built["cwd"] == "/opt/dock" and built["run"] == "ran as 0", built
    assert built["owners"] == plain["owners"], built


def test_an_ordinary_account_prunes_its_image_cache(two):
    """Last: layers hold files of the account's subordinate ids, which only its namespace may delete."""
    a, _ = two
    layers = a.account.home / ".cache" / "ketch" / "images" / "layers"
    first = _subuid_start(a.account.name)
    assert any(os.lstat(p).st_uid >= first for p in layers.rglob("*")), "no subordinate-id files"
    pruned = a.cli("image", "prune", "--older-than", "0", timeout=120).check()
    assert "removed" in pruned.stdout and not any(layers.iterdir()), pruned.describe()


SINGLE_ID_APP = """
import ketch

app = ketch.App("single-id")
image = ketch.Image.from_registry("{ref}").apt_install("jq")


@app.function(image=image)
def inside():
    import os
    import subprocess

    return {{
        "uid_map": open("/proc/self/uid_map").read().split(),
        "jq": subprocess.run(["jq", "--version"], capture_output=True, text=True).stdout.strip(),
        "uid": os.getuid(),
    }}


@app.local_entrypoint()
def main():
    show("inside", inside.remote)
"""

SLIM_APP = """
import ketch

app = ketch.App("single-id-slim")


@app.function(image=ketch.Image.debian_slim())
def never():
    return "built"
"""


def test_an_account_without_subordinate_ids_runs_on_a_single_id_mapping(registry_ref):
    """No /etc/subuid range: the account alone is mapped. Registry images (unpacked without
    their owners) and apt steps still work; debian_slim says what to ask an administrator."""
    account = accounts.Account.create(subids=False)
    env = AccountEnv(account)
    try:
        app = account.write(
            "app/single_id_app.py", SHOW + textwrap.dedent(SINGLE_ID_APP.format(ref=registry_ref))
        )
        run = ExampleRun.parse(env.cli("run", app, timeout=300))
        seen = run.value("inside")
        assert seen["uid_map"] == ["0", str(account.uid), "1"], seen  # the account alone
        assert seen["jq"].startswith("jq-") and seen["uid"] == 0, seen
        slim_app = account.write("app/slim_app.py", SLIM_APP)
        slim = env.cli("run", f"{slim_app}::never", timeout=120)
        assert slim.returncode != 0 and "ImageBuildError" in slim.output, slim.describe()
        assert "debian_slim cannot be built here" in slim.output, slim.describe()
        assert (
            f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {account.name}"
            in (slim.output)
        )
        assert "single-id mapping" in (env.home / "server.log").read_text()
    finally:
        env.close()
        account.remove()
