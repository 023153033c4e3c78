"""Shared harness for the end-to-end tests.

Every end-to-end test talks to ketch only the way a user does: through the
``ketch`` CLI and plain ``python`` processes, each started with its own
``KETCH_HOME`` so that tests never touch ``~/.ketch`` or each other's servers.

Fixtures:

* ``ketch_env`` - one home (and so one control plane) shared by the whole
  session; most tests use it, which keeps the suite fast.
* ``fresh_ketch_env`` - a home of its own, for tests that kill, stop or restart
  the control plane.

Teardown stops the control plane and kills every process that was started
under the home (found by a marker in its environment, its command line, or as
a child of the control plane), so nothing leaks from a failed test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
EXAMPLES = REPO / "examples"

# Let the test process import ketch even when the package is not installed.
if importlib.util.find_spec("ketch") is None and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes tens of seconds (restarts servers, waits on timers)"
    )
    config.addinivalue_line("markers", "e2e: runs ketch through its CLI in subprocesses")


# Modules that touch what a whole machine shares: the containers' cgroup parent (a sandbox
# control plane removes empty groups under it at start), the user namespace and its
# staging under /run/ketch, the machine's image cache (`ketch image rm|prune`). Under
# pytest-xdist (`scripts/check` runs two workers) they run one at a time on one worker;
# every other module is a group of its own, so its module fixtures are set up once.
NODE_GLOBAL = {
    "test_cgroups.py",
    "test_images.py",
    "test_seccomp.py",
    "test_user_namespace.py",
    "test_volume_store.py",
    "test_container_api.py",
    "test_container_boundary.py",
    "test_identity.py",
    "test_resource_bounds.py",
    "test_userns.py",
    "test_e2e_dict_queue.py",
    "test_e2e_gpus.py",
    "test_e2e_sandbox.py",
    "test_e2e_sandbox_examples.py",
    "test_e2e_sandboxes.py",
    "test_e2e_secrets.py",
    "test_e2e_volumes.py",
}


# Modules that add and remove accounts (tests/accounts.py): /etc/passwd and /etc/subuid are
# edited one writer at a time, and a new account's subordinate range must not race another's.
ACCOUNTS = {"test_rootless.py", "test_e2e_rootless.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns the mark into the test's group
def pytest_collection_modifyitems(config, items):
    # On an xdist worker (where tests are collected) the plugin is not registered as
    # "xdist": ask whether tests are grouped at all instead.
    if not (config.getoption("dist", "no") == "loadgroup" or hasattr(config, "workerinput")):
        return
    for item in items:
        name = item.path.name
        group = "node" if name in NODE_GLOBAL else str(item.path.relative_to(REPO))
        group = "accounts" if name in ACCOUNTS else group
        item.add_marker(pytest.mark.xdist_group(group))


def _ketch_command() -> list[str]:
    script = Path(sys.executable).parent / "ketch"
    if script.exists():
        return [str(script)]
    launcher = (
        "import sys; sys.argv[0] = 'ketch'; from ketch.cli.main import main; sys.exit(main())"
    )
    return [sys.executable, "-c", launcher]


# ---------------------------------------------------------------------------
# process helpers


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except PermissionError:
        return True
    return state not in ("Z", "X")


def pid_alive(pid: int) -> bool:
    return _pid_alive(pid)


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _proc_table() -> dict[int, tuple[int, bytes, bytes]]:
    """pid -> (ppid, cmdline, environ) for every process we may read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read()
            except PermissionError:
                environ = b""
        except (OSError, IndexError, ValueError):
            continue
        table[pid] = (ppid, cmdline, environ)
    return table


def _descendants(root: int, table) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        children = {
            pid for pid, (ppid, _, _) in table.items() if ppid in frontier and pid not in found
        }
        found |= children
        frontier = children
    return found


# ---------------------------------------------------------------------------
# the environment object handed to tests


@dataclass
class Completed:
    """What a finished (or timed-out) subprocess produced."""

    args: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    elapsed: float = 0.0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\n"
            f"exit code: {self.returncode}{' (TIMED OUT)' if self.timed_out else ''}, {self.elapsed:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    def check(self) -> Completed:
        assert not self.timed_out and self.returncode == 0, self.describe()
        return self


_RESULT_RE = re.compile(r"RESULT (\{.*\})\s*$")


# The head of a script that a test runs and reads with ``ExampleRun``: ``show(step, fn)``
# prints one RESULT line with what ``fn()`` returned or the error it raised.
SHOW = """\
import json


def show(step, fn):
    try:
        line = {"step": step, "value": fn()}
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(line, default=repr), flush=True)

"""


@dataclass
class ExampleRun:
    """A finished example run and the ``RESULT {...}`` lines it printed."""

    proc: Completed
    steps: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def parse(cls, proc: Completed) -> ExampleRun:
        steps = {}
        for line in proc.stdout.splitlines():
            m = _RESULT_RE.search(line)
            if not m:
                continue
            try:
                entry = json.loads(m.group(1))
            except ValueError:
                continue
            if isinstance(entry, dict) and "step" in entry:
                steps[entry["step"]] = entry
        return cls(proc, steps)

    def entry(self, step: str) -> dict:
        assert step in self.steps, f"step {step!r} printed no RESULT line\n{self.proc.describe()}"
        return self.steps[step]

    def value(self, step: str):
        entry = self.entry(step)
        assert "error" not in entry, (
            f"step {step!r} raised {entry['error']}\n{self.proc.describe()}"
        )
        return entry["value"]

    def error(self, step: str) -> str:
        entry = self.entry(step)
        assert "error" in entry, f"step {step!r} did not raise; returned {entry.get('value')!r}"
        return entry["error"]


class KetchEnv:
    """One isolated ``KETCH_HOME`` and helpers to run ketch against it."""

    # Handy in tests without importing this module.
    wait_until = staticmethod(wait_until)
    pid_alive = staticmethod(_pid_alive)

    def __init__(self, home: Path, runtime: str = "local"):
        self.home = home
        self.tag = uuid.uuid4().hex
        env = dict(os.environ)
        env.pop("KETCH_SERVER_URL", None)
        env["KETCH_HOME"] = str(home)
        env["KETCH_RUNTIME"] = runtime
        env["KETCH_E2E_TAG"] = self.tag
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
        self.database = ""
        if TEST_POSTGRES:  # the state in PostgreSQL: a database of its own
            self.database = f"ketch_{self.tag[:16]}"
            _psql(f"CREATE DATABASE {self.database} LOCALE 'C' TEMPLATE template0")
            env["KETCH_DATABASE"] = f"{TEST_POSTGRES}/{self.database}"
        self.env = env
        self.wrap: list[str] = []  # run every command under this (nsenter into a netns, say)
        self._server_pids: set[int] = set()
        self._popens: list[subprocess.Popen] = []

    # -- running things ----------------------------------------------------

    def _run(
        self, args, timeout: float, cwd=None, extra_env=None, allow_timeout=False
    ) -> Completed:
        env = dict(self.env, **(extra_env or {}))
        start = time.monotonic()
        proc = subprocess.Popen(
            [*self.wrap, *args],
            cwd=cwd or REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        timed_out = False
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(proc.pid, signal.SIGINT)
            try:
                stdout, stderr = proc.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
        self._remember_server()
        result = Completed(
            [str(a) for a in args],
            proc.returncode,
            stdout,
            stderr,
            timed_out,
            time.monotonic() - start,
        )
        if timed_out and not allow_timeout:
            raise AssertionError(f"command did not finish within {timeout}s\n{result.describe()}")
        return result

    def cli(self, *args, timeout: float = 90, **kw) -> Completed:
        """Run ``ketch ARGS...`` and return what it printed."""
        return self._run(_ketch_command() + [str(a) for a in args], timeout, **kw)

    def python(self, *args, timeout: float = 90, **kw) -> Completed:
        """Run ``python ARGS...`` (a script path or ``-c CODE``)."""
        return self._run([sys.executable] + [str(a) for a in args], timeout, **kw)

    def run_example(self, target: str, *args, timeout: float = 90) -> ExampleRun:
        """``ketch run examples/TARGET ARGS...`` with its RESULT lines parsed."""
        return ExampleRun.parse(self.cli("run", f"examples/{target}", *args, timeout=timeout))

    def popen(self, *args) -> StreamingProcess:
        """Start ``ketch ARGS...`` in the background, recording each output line as it arrives."""
        proc = StreamingProcess([*self.wrap, *_ketch_command()] + [str(a) for a in args], self.env)
        self._popens.append(proc.proc)
        return proc

    # -- the control plane -------------------------------------------------

    def server_info(self) -> dict | None:
        try:
            info = json.loads((self.home / "server.json").read_text())
        except (OSError, ValueError):
            return None
        if isinstance(info, dict) and isinstance(info.get("pid"), int):
            self._server_pids.add(info["pid"])
        return info

    def _remember_server(self) -> None:
        self.server_info()

    def server_pid(self) -> int:
        info = self.server_info()
        assert info is not None, f"no server.json under {self.home}"
        return info["pid"]

    def rpc(self, method: str, body: dict | None = None, timeout: float = 10) -> dict:
        """Call the control plane's HTTP API directly (docs/contracts.md)."""
        import urllib.error
        import urllib.request

        import msgpack

        info = self.server_info()
        assert info is not None, f"no server.json under {self.home}"
        request = urllib.request.Request(
            f"{info['url']}/rpc/{method}",
            data=msgpack.packb(body or {}),
            headers={
                "Content-Type": "application/msgpack",
                "Authorization": f"Bearer {(self.home / 'token').read_text().strip()}",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return msgpack.unpackb(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"{method} failed: {exc.code} {msgpack.unpackb(exc.read())}"
            ) from None

    def app_record(self, name: str) -> dict | None:
        """The newest AppList entry named ``name``."""
        apps = [a for a in self.rpc("AppList")["apps"] if a.get("name") == name]
        return max(apps, key=lambda a: a.get("created_at") or 0) if apps else None

    # -- cleanup -----------------------------------------------------------

    def sql(self, query: str) -> list[tuple]:
        """Rows of a read-only query on this environment's store (SQLite or PostgreSQL)."""
        if self.database:
            done = subprocess.run(
                ["psql", "-qAt", "-F", "\t", self.env["KETCH_DATABASE"], "-c", query],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return [tuple(line.split("\t")) for line in done.stdout.splitlines() if line]
        import sqlite3

        with contextlib.closing(
            sqlite3.connect(f"file:{self.home / 'state.db'}?mode=ro", uri=True)
        ) as db:
            return list(db.execute(query))

    def _owned_pids(self) -> set[int]:
        table = _proc_table()
        marker, home = f"KETCH_E2E_TAG={self.tag}".encode(), str(self.home).encode()
        me = os.getpid()
        owned = {
            pid
            for pid, (_, cmdline, environ) in table.items()
            if marker in environ.split(b"\0") or home in cmdline
        }
        # Containers may run with a clean environment: count the children of
        # anything we started (the control plane above all) as ours too.
        for pid in list(owned):
            owned |= _descendants(pid, table)
        owned.discard(me)
        return owned

    def leftover_pids(self) -> set[int]:
        return {pid for pid in self._owned_pids() if _pid_alive(pid)}

    def kill_leftovers(self, also: set[int] = frozenset()) -> set[int]:
        pids = self.leftover_pids() | {pid for pid in also if _pid_alive(pid)}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        wait_until(lambda: not any(_pid_alive(p) for p in pids), 5)
        return pids

    def close(self) -> None:
        killed = False
        for proc in self._popens:
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGKILL)
                killed = True
        # Note the control plane's children now: once it stops they are reparented.
        before = self._owned_pids()
        info = self.server_info()
        if info is not None:
            # What `ketch server stop` does (tests/e2e/test_e2e_server.py proves the command),
            # without starting a CLI process per environment.
            _signal_pid(info["pid"], signal.SIGTERM)
            if not wait_until(lambda: not _pid_alive(info["pid"]), 30, interval=0.05):
                _signal_pid(info["pid"], signal.SIGKILL)
        self.kill_leftovers(before)
        if killed:  # a client killed mid-reconnect may have been starting a new server
            time.sleep(0.5)
            self.kill_leftovers()
        # A control plane that had to be killed (or that a test killed last) leaves its user
        # namespace's pins and mount points; its next start would detach them, but there is
        # none: the test's home goes now.
        from ketch.worker import isolate, userns

        top = userns.run_dir(self.home)
        if os.geteuid() == 0 and top.exists():
            userns.clear(top)
        if os.geteuid() == 0:  # and the mounts in its home (scratch disks, templates' areas)
            for point in sorted(isolate.mount_points(self.home), key=len, reverse=True):
                isolate.unmount_sync(Path(point))
        if self.database:
            _psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


# KETCH_TEST_POSTGRES=postgresql://USER@HOST:PORT: every KetchEnv keeps its state in a
# database of its own on that server (the suites run on PostgreSQL instead of SQLite).
TEST_POSTGRES = os.environ.get("KETCH_TEST_POSTGRES", "").rstrip("/")


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-q", f"{TEST_POSTGRES}/postgres", "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class StreamingProcess:
    """A background process whose output lines are collected, with arrival times, as they come."""

    def __init__(self, args: list[str], env: dict):
        self.args = args
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str, str]] = []  # (seconds since start, stream, text)
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name):
        with stream:  # the pipe closes with the process's output, not when collected
            for line in stream:
                with self._lock:
                    self.lines.append((time.monotonic() - self.started, name, line.rstrip("\n")))

    def first_time(self, text: str) -> float | None:
        with self._lock:
            return next((t for t, _, line in self.lines if text in line), None)

    def wait_for_line(self, text: str, timeout: float) -> bool:
        return (
            wait_until(
                lambda: self.first_time(text) is not None or self.proc.poll() is not None, timeout
            )
            and self.first_time(text) is not None
        )

    def wait(self, timeout: float) -> Completed:
        try:
            self.proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        return Completed(
            self.args,
            self.proc.returncode,
            self.text("stdout"),
            self.text("stderr"),
            timed_out,
            time.monotonic() - self.started,
        )

    def text(self, stream: str | None = None) -> str:
        with self._lock:
            return "".join(line + "\n" for _, s, line in self.lines if stream in (None, s))


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in ``folder``), for TLS tests."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ketch-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _new_home(prefix: str) -> Path:
    # Short paths under /tmp: the control plane may put unix sockets in its home.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(scope="session")
def ketch_env():
    """A ``KETCH_HOME`` (and control plane) shared by every test in the session."""
    home = _new_home("ketch-e2e-")
    env = KetchEnv(home)
    yield env
    env.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def fresh_ketch_env():
    """A ``KETCH_HOME`` of its own, for tests that stop, kill or restart the control plane."""
    home = _new_home("ketch-e2e-own-")
    env = KetchEnv(home)
    yield env
    env.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def workdir():
    """An empty directory that the test and its containers can both write to."""
    path = Path(tempfile.mkdtemp(prefix="ketch-e2e-work-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox_env():
    """A ``KETCH_HOME`` of its own whose control plane runs every container in the sandbox runtime.

    Skips (with the reason) where bubblewrap, root or overlayfs are missing. The
    image layer cache stays the machine's (``KETCH_IMAGE_CACHE``), so the Debian
    base is built at most once per machine.
    """
    from ketch.worker import isolate

    support = isolate.support()
    if not support.ok:
        pytest.skip(f"the sandbox runtime cannot run on this machine: {support.reason}")
    home = _new_home("ketch-e2e-sbx-")
    env = KetchEnv(home)
    env.env["KETCH_RUNTIME"] = "sandbox"
    yield env
    env.close()
    shutil.rmtree(home, ignore_errors=True)


# -- the control plane's wire, spoken by hand (attack and protocol tests) ------------------


def post_raw(
    url: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict]:
    """``POST`` ``data`` to ``url``; ``(status, decoded msgpack reply)``, errors included."""
    import urllib.error
    import urllib.request

    import msgpack

    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, msgpack.unpackb(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, msgpack.unpackb(err.read())


def frame(obj: object) -> bytes:
    """One RPC frame: a 4-byte big-endian length and a msgpack body."""
    import struct

    import msgpack

    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def read_frame(sock) -> dict:
    """The next frame on a blocking socket, decoded."""
    import struct

    import msgpack

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    (size,) = struct.unpack(">I", exactly(4))
    return msgpack.unpackb(exactly(size), raw=False)


# Test modules import these helpers as ``ketch_testing``: every test folder with a
# conftest.py of its own (integration, security) replaces ``conftest`` in sys.modules,
# so ``from conftest import ...`` would depend on the order pytest collects folders in.
sys.modules.setdefault("ketch_testing", sys.modules[__name__])
