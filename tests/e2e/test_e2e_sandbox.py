"""The sandbox runtime end to end: images built from every ``Image`` method, the layer
cache, build failures, registries and Dockerfiles, isolation, ``block_network``,
memory limits and ``ketch image list|rm|prune``.

Every test drives the real CLI against ``sandbox_env`` (its own ``KETCH_HOME``,
``KETCH_RUNTIME=sandbox``). The apps are written into temporary directories and
print ``RESULT {...}`` lines from their local entrypoint.

The layer cache (``KETCH_IMAGE_CACHE``, default ``~/.cache/ketch/images``) is the
machine's and shared with everyone: layers these tests create carry ``TOKEN`` in
their step summary, only those are removed or pruned, and they are deleted when
the module finishes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from ketch_testing import SHOW, ExampleRun

pytestmark = [pytest.mark.e2e]

# Unique to this session: names every layer these tests may remove.
TOKEN = f"sbx{uuid.uuid4().hex[:12]}"

# The first build of the Debian base on a fresh machine runs debootstrap (~60 s).
FIRST_BUILD_S = 300

PRELUDE = SHOW + "import os\nimport sys\n\nimport ketch\n\n"


# --- helpers ------------------------------------------------------------------------------


def write_app(directory: Path, name: str, body: str) -> Path:
    """Write ``PRELUDE + body`` to ``directory/name.py`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def run_app(env, app: Path, *args, timeout: float = 120) -> ExampleRun:
    return ExampleRun.parse(env.cli("run", app, *args, timeout=timeout))


def cache_root() -> Path:
    return Path(os.environ.get("KETCH_IMAGE_CACHE", "~/.cache/ketch/images")).expanduser()


def layer_path(layer_hash: str) -> Path:
    return cache_root() / "layers" / layer_hash


_STEP_LINE = re.compile(r"=> \[(\d+)/(\d+)\] (.*)$")


def build_steps(output: str) -> dict[int, str]:
    """Step number -> ``cached``, ``built`` or ``started`` (began, never finished) from build output."""
    steps: dict[int, str] = {}
    for line in output.splitlines():
        m = _STEP_LINE.search(line)
        if not m:
            continue
        index, rest = int(m.group(1)), m.group(3)
        if rest.endswith("(cached)"):
            steps[index] = "cached"
        elif re.search(r" done in [\d.]+s$", rest):
            steps[index] = "built"
        else:
            steps.setdefault(index, "started")
    return steps


def image_hashes(*build) -> list[str]:
    """Layer hashes of an image described in the test process (``build`` is applied in order)."""
    from ketch.image import Image

    image = Image.debian_slim("3.11")
    for command in build:
        image = image.run_commands(command)
    return [layer.hash for layer in image.layers]


def remove_own_layers() -> list[str]:
    """Delete every cached layer whose step mentions ``TOKEN`` (and the layers built on it)."""
    from ketch.images.layers import LayerStore

    if not (cache_root() / "layers").is_dir():
        return []
    store = LayerStore(cache_root())
    removed: list[str] = []
    for info in store.infos():
        if TOKEN in info.summary and store.path(info.hash).exists():
            removed += store.remove(info.hash)
    return removed


@pytest.fixture(scope="module", autouse=True)
def _cleanup_own_layers():
    yield
    remove_own_layers()


@pytest.fixture(scope="module")
def apps(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sandbox-apps")


# --- the base image, isolation and the network ----------------------------------------------

ISOLATION_APP = """\
import socket
from pathlib import Path

app = ketch.App("sandbox-isolation")


@app.function()
def look(secret_path: str, home: str):
    try:
        with open(secret_path) as fh:
            opened = "opened: " + fh.read()
    except Exception as exc:
        opened = type(exc).__name__
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    procs[entry] = fh.read().replace(b"\\0", b" ").decode(errors="replace").strip()
            except OSError:
                pass
    return {
        "opened": opened,
        "home_exists": os.path.exists(home),
        "home_in_env": [k for k, v in os.environ.items() if home in v],
        "procs": procs,
        "nodename": os.uname().nodename,
    }


@app.function()
def writer(name: str):
    Path(f"/root/{name}").write_text("written by writer")
    return {"exists": os.path.exists(f"/root/{name}"), "nodename": os.uname().nodename}


@app.function()
def reader(name: str):
    return {"exists": os.path.exists(f"/root/{name}"), "nodename": os.uname().nodename}


def dial(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"ping")
            return "connected: " + conn.recv(16).decode()
    except OSError as exc:
        return f"OSError {type(exc).__name__}: {exc}"


@app.function()
def connect(port: int):
    return dial(port)


@app.function(block_network=True)
def connect_blocked(port: int):
    return dial(port)


@app.function()
def add_one(x: int) -> int:
    return x + 1


@app.function(block_network=True)
def blocked_calls_remote(x: int) -> int:
    return add_one.remote(x)


@app.local_entrypoint()
def main(secret_path: str, home: str, port: int, name: str):
    show("look", lambda: look.remote(secret_path, home))
    show("writer", lambda: writer.remote(name))
    show("reader", lambda: reader.remote(name))
    show("connect", lambda: connect.remote(port))
    show("connect_blocked", lambda: connect_blocked.remote(port))
    show("blocked_calls_remote", lambda: blocked_calls_remote.remote(41))
"""


class _Listener:
    """A TCP server on 127.0.0.1 that answers ``pong`` to every connection, in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                try:
                    conn.recv(16)
                    conn.sendall(b"pong")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def host_secret() -> Path:
    path = Path("/tmp") / f"ketch-e2e-host-secret-{TOKEN}.txt"
    path.write_text("only on the host\n")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def listener():
    server = _Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def isolation_run(sandbox_env, apps, host_secret, listener) -> ExampleRun:
    # Also the first run of the module: it may build the Debian base.
    app = write_app(apps, "isolation_app", ISOLATION_APP)
    run = run_app(
        sandbox_env,
        app,
        "--secret-path",
        host_secret,
        "--home",
        sandbox_env.home,
        "--port",
        listener.port,
        "--name",
        f"x-{TOKEN}",
        timeout=FIRST_BUILD_S,
    )
    run.proc.check()
    return run


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_container_cannot_open_host_files(isolation_run, host_secret):
    assert host_secret.exists()
    assert isolation_run.value("look")["opened"] == "FileNotFoundError"


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_container_cannot_see_ketch_home(isolation_run, sandbox_env):
    look = isolation_run.value("look")
    assert look["home_exists"] is False, f"{sandbox_env.home} is visible in the container"
    assert look["home_in_env"] == [], f"variables naming KETCH_HOME: {look['home_in_env']}"


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_container_has_its_own_pid_namespace(isolation_run):
    procs = isolation_run.value("look")["procs"]
    assert 1 <= len(procs) <= 10, f"the container sees {len(procs)} processes: {procs}"
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
        mine = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    assert mine not in procs.values(), procs
    # Only the container's own processes: bubblewrap (its pid 1) and the ketch runtime it runs.
    strangers = {pid: cmd for pid, cmd in procs.items() if "ketch.guest" not in cmd}
    assert not strangers, f"processes from outside the container are visible: {strangers}"


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_hostname_is_per_container(isolation_run):
    assert isolation_run.value("look")["nodename"].startswith("ketch-")


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_containers_do_not_share_files(isolation_run):
    written, read = isolation_run.value("writer"), isolation_run.value("reader")
    assert written["exists"] is True, written
    assert read["exists"] is False, "a file written in one container showed up in another"
    assert written["nodename"] != read["nodename"], (written, read)


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_function_reaches_host_loopback(isolation_run, listener):
    assert isolation_run.value("connect") == "connected: pong"
    assert listener.accepted >= 1


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_block_network_cannot_connect(isolation_run):
    result = isolation_run.value("connect_blocked")
    assert result.startswith("OSError"), f"block_network=True function connected: {result}"


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_block_network_function_can_still_call_functions(isolation_run):
    assert isolation_run.value("blocked_calls_remote") == 42


@pytest.mark.timeout(60)
def test_server_status_shows_sandbox_runtime(sandbox_env, isolation_run):
    proc = sandbox_env.cli("server", "status", timeout=30).check()
    assert re.search(r"^runtime\s+sandbox\s*$", proc.stdout, re.M), proc.describe()
    assert re.search(r"^isolation\s+.*cgroup", proc.stdout, re.M), proc.describe()


# --- memory limits -------------------------------------------------------------------------

MEMORY_APP = """\
app = ketch.App("sandbox-memory")


@app.function(memory=(64, 128))
def hog(mb: int) -> int:
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block) // 2**20


def catch(fn):
    try:
        return {"returned": fn()}
    except Exception as exc:
        return {
            "type": type(exc).__name__,
            "is_oom": isinstance(exc, ketch.exception.OutOfMemoryError),
            "message": str(exc),
        }


@app.local_entrypoint()
def main():
    show("too_much", lambda: catch(lambda: hog.remote(400)))
    show("under_limit", lambda: catch(lambda: hog.remote(16)))
"""


@pytest.mark.timeout(FIRST_BUILD_S + 120)
def test_memory_limit_raises_out_of_memory(sandbox_env, apps):
    run = run_app(sandbox_env, write_app(apps, "memory_app", MEMORY_APP), timeout=FIRST_BUILD_S)
    run.proc.check()
    too_much = run.value("too_much")
    assert too_much.get("is_oom"), f"expected OutOfMemoryError, got {too_much}"
    assert "ran out of memory" in too_much["message"], too_much
    assert "128 MiB" in too_much["message"], too_much
    assert run.value("under_limit") == {"returned": 16}


# --- one image chain using every Image method --------------------------------------------------

CHAIN_APP = """\
import importlib.metadata
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_marker(arg):
    with open("/opt/run-function.txt", "w") as fh:
        fh.write(f"run_function got {arg}")


image = (
    ketch.Image.debian_slim()
    .apt_install("jq")
    .pip_install("six==1.16.0")
    .uv_pip_install("idna==3.7")
    .pip_install_from_requirements(HERE / "requirements.txt")
    .run_commands("echo built > /opt/marker")
    .run_function(write_marker, args=("x",))
    .env({"GREETING": "hello"})
    .workdir("/srv/app")
    .add_local_file(HERE / "copied.txt", "/opt/copied.txt", copy=True)
    .add_local_dir(HERE / "assets", "/mnt/assets", copy=False, ignore=["*.tmp"])
    .add_local_python_source("helper_mod")
)

with image.imports():
    import six

app = ketch.App("sandbox-chain")


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


@app.function(image=image)
def inspect():
    import helper_mod
    import idna
    import packaging

    listing = sorted(
        os.path.relpath(os.path.join(top, name), "/mnt/assets")
        for top, _dirs, files in os.walk("/mnt/assets")
        for name in files
    )
    return {
        "jq": shutil.which("jq"),
        "six": [six.__version__, importlib.metadata.version("six")],
        "idna": [idna.__version__, importlib.metadata.version("idna")],
        "packaging": [packaging.__version__, importlib.metadata.version("packaging")],
        "marker": read("/opt/marker"),
        "run_function": read("/opt/run-function.txt"),
        "greeting": os.environ.get("GREETING"),
        "cwd": os.getcwd(),
        "copied": read("/opt/copied.txt"),
        "mounted": listing,
        "mounted_text": read("/mnt/assets/keep.txt"),
        "helper": helper_mod.VALUE,
        "helper_file": helper_mod.__file__,
    }


@app.local_entrypoint()
def main():
    show("six_missing_locally_is_fine", lambda: "six" in sys.modules)
    show("inspect", inspect.remote)
"""


@pytest.fixture(scope="module")
def chain_run(sandbox_env, apps) -> ExampleRun:
    folder = apps / "chain"
    folder.mkdir()
    (folder / "requirements.txt").write_text("# pinned for the test\npackaging==24.1\n")
    (folder / "copied.txt").write_text("copied into the image\n")
    (folder / "assets" / "sub").mkdir(parents=True)
    (folder / "assets" / "keep.txt").write_text("mounted at start\n")
    (folder / "assets" / "skip.tmp").write_text("ignored\n")
    (folder / "assets" / "sub" / "nested.txt").write_text("nested\n")
    (folder / "helper_mod.py").write_text('VALUE = "helper-value-42"\n')
    # The file name (so the module name) carries TOKEN: the run_function layer (pickled by
    # value, so unique to this session) and those after it are removed at the end.
    app = write_app(folder, f"chain_{TOKEN}", CHAIN_APP)
    run = run_app(sandbox_env, app, timeout=FIRST_BUILD_S)
    run.proc.check()
    return run


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_chain_build_output_lists_every_step(chain_run):
    steps = build_steps(chain_run.proc.output)
    assert sorted(steps) == list(range(1, 11)), chain_run.proc.describe()
    assert "started" not in steps.values(), steps
    for summary in (
        "debian_slim python 3.11",
        "apt_install jq",
        "pip_install six==1.16.0",
        "uv_pip_install idna==3.7",
        "pip_install_from_requirements (1 requirements)",
        "run_commands echo built > /opt/marker",
        f"run_function chain_{TOKEN}.write_marker",
        "env GREETING=hello",
        "workdir /srv/app",
        "add_local_file -> /opt/copied.txt",
    ):
        assert summary in chain_run.proc.output, f"{summary!r} missing\n{chain_run.proc.describe()}"


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_image_imports_skips_missing_package_locally(chain_run):
    # ``with image.imports(): import six`` ran at the top of the app in this very interpreter.
    six_here = importlib.util.find_spec("six") is not None
    assert chain_run.value("six_missing_locally_is_fine") is six_here


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_chain_packages(chain_run):
    seen = chain_run.value("inspect")
    assert seen["jq"] and seen["jq"].endswith("/jq"), seen
    assert seen["six"] == ["1.16.0", "1.16.0"], seen
    assert seen["idna"] == ["3.7", "3.7"], seen
    assert seen["packaging"] == ["24.1", "24.1"], seen


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_chain_commands_and_config(chain_run):
    seen = chain_run.value("inspect")
    assert seen["marker"] == "built", seen
    assert seen["run_function"] == "run_function got x", seen
    assert seen["greeting"] == "hello", seen
    assert seen["cwd"] == "/srv/app", seen


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_chain_local_files(chain_run):
    seen = chain_run.value("inspect")
    assert seen["copied"] == "copied into the image", seen
    assert seen["mounted"] == ["keep.txt", "sub/nested.txt"], seen
    assert seen["mounted_text"] == "mounted at start", seen
    assert seen["helper"] == "helper-value-42", seen
    assert seen["helper_file"] == "/root/helper_mod.py", seen


# --- the layer cache -------------------------------------------------------------------------

CACHE_APP = """\
image = (
    ketch.Image.debian_slim("3.11")
    .run_commands("echo {token}-cache-base")
    .run_commands("echo {token}-cache-{variant}"{force})
)
app = ketch.App("sandbox-cache")


@app.function(image=image)
def probe() -> str:
    return "ran"


@app.local_entrypoint()
def main():
    show("probe", probe.remote)
"""


def _cache_app(apps: Path, name: str, variant: str, force: bool = False) -> Path:
    body = CACHE_APP.format(
        token=TOKEN, variant=variant, force=", force_build=True" if force else ""
    )
    return write_app(apps, name, body)


@pytest.mark.timeout(FIRST_BUILD_S + 120)
def test_layer_cache_reuses_and_rebuilds_only_what_changed(sandbox_env, apps):
    app_a = _cache_app(apps, "cache_a", "A")
    last_a = f"run_commands echo {TOKEN}-cache-A"

    first = run_app(sandbox_env, app_a, timeout=FIRST_BUILD_S)
    first.proc.check()
    assert first.value("probe") == "ran"
    steps = build_steps(first.proc.output)
    assert steps.get(3) == "built", first.proc.describe()
    assert last_a in first.proc.output and f"{TOKEN}-cache-A" in first.proc.stderr

    # Unchanged: nothing is built (a fully cached image may print no build output at all).
    again = run_app(sandbox_env, app_a)
    again.proc.check()
    assert again.value("probe") == "ran"
    assert " done in " not in again.proc.output, again.proc.describe()
    assert all(s == "cached" for s in build_steps(again.proc.output).values()), (
        again.proc.describe()
    )

    # Only the last command changes: the steps before it come from the cache.
    changed = run_app(sandbox_env, _cache_app(apps, "cache_b", "B"))
    changed.proc.check()
    assert changed.value("probe") == "ran"
    assert build_steps(changed.proc.output) == {1: "cached", 2: "cached", 3: "built"}, (
        changed.proc.describe()
    )
    assert f"run_commands echo {TOKEN}-cache-B" in changed.proc.output

    # force_build on the last step rebuilds it, and only it, although it is cached.
    forced = run_app(sandbox_env, _cache_app(apps, "cache_a_forced", "A", force=True))
    forced.proc.check()
    assert forced.value("probe") == "ran"
    assert build_steps(forced.proc.output) == {1: "cached", 2: "cached", 3: "built"}, (
        forced.proc.describe()
    )
    assert last_a in forced.proc.output


# --- build failures --------------------------------------------------------------------------

FAILING_STEP_APP = """\
image = ketch.Image.debian_slim("3.11").run_commands("echo about-to-fail; exit 3")
app = ketch.App("sandbox-failing-step")


@app.function(image=image)
def never() -> str:
    print("FUNCTION-BODY-RAN")
    return "ran"


@app.local_entrypoint()
def main():
    print("ENTRYPOINT-RAN")
    show("never", never.remote)
"""


@pytest.mark.timeout(FIRST_BUILD_S + 60)
def test_failing_build_step(sandbox_env, apps):
    proc = sandbox_env.cli(
        "run", write_app(apps, "failing_step", FAILING_STEP_APP), timeout=FIRST_BUILD_S
    )
    assert proc.returncode not in (0, None), proc.describe()
    out = proc.output
    assert "ImageBuildError" in out, proc.describe()
    assert "[2/2] run_commands echo about-to-fail; exit 3" in out, proc.describe()
    assert "about-to-fail" in out, proc.describe()
    assert "code 3" in out, proc.describe()
    assert "FUNCTION-BODY-RAN" not in out and "ENTRYPOINT-RAN" not in out, proc.describe()
    assert "RESULT" not in proc.stdout, proc.describe()


BAD_DOCKERFILE_APP = """\
from pathlib import Path

image = ketch.Image.from_dockerfile(Path(__file__).resolve().parent / "Dockerfile")
app = ketch.App("sandbox-bad-dockerfile")


@app.function(image=image)
def never() -> str:
    return "ran"


@app.local_entrypoint()
def main():
    show("never", never.remote)
"""


@pytest.mark.timeout(60)
def test_unsupported_dockerfile_instruction_fails_fast(sandbox_env, apps):
    folder = apps / "bad_dockerfile"
    folder.mkdir()
    (folder / "Dockerfile").write_text(
        "FROM debian:bookworm-slim\n"
        "RUN --mount=type=cache,target=/root/.cache pip install six\n"
        'CMD ["true"]\n'
    )
    proc = sandbox_env.cli(
        "run", write_app(folder, "bad_dockerfile", BAD_DOCKERFILE_APP), timeout=45
    )
    assert proc.returncode not in (0, None), proc.describe()
    assert "InvalidError" in proc.output, proc.describe()
    assert "line 2" in proc.output, proc.describe()
    assert "Building image" not in proc.output, proc.describe()  # refused before any build


UNAVAILABLE_PYTHON_APP = """\
image = ketch.Image.debian_slim(python_version="3.12")
app = ketch.App("sandbox-python-312")


@app.function(image=image)
def never() -> str:
    return "ran"


@app.local_entrypoint()
def main():
    show("never", never.remote)
"""


@pytest.mark.timeout(90)
def test_debian_slim_python_without_debian_package(sandbox_env, apps):
    proc = sandbox_env.cli("run", write_app(apps, "python312", UNAVAILABLE_PYTHON_APP), timeout=60)
    assert proc.returncode not in (0, None), proc.describe()
    assert "ImageBuildError" in proc.output, proc.describe()
    assert "3.12" in proc.output and "cannot be provided" in proc.output, proc.describe()
    assert "RESULT" not in proc.stdout, proc.describe()


# --- from_registry and from_dockerfile against a local registry ---------------------------------


BASE_APP = """\
app = ketch.App("sandbox-base")


@app.function()
def f() -> int:
    return 1


@app.local_entrypoint()
def main():
    show("f", f.remote)
"""


@pytest.fixture(scope="module")
def base_layer_fs(sandbox_env, apps) -> Path:
    """The Debian base layer's filesystem in the machine's cache (built first if missing)."""
    from ketch.image import Image

    base = Image.debian_slim().layers[0].hash
    fs = layer_path(base) / "fs"
    if not fs.is_dir():
        app = write_app(apps, "build_base", BASE_APP)
        run_app(sandbox_env, app, timeout=FIRST_BUILD_S).proc.check()
    assert fs.is_dir(), f"no base layer at {fs}"
    return fs


@pytest.fixture(scope="module")
def registry_ref(base_layer_fs, tmp_path_factory):
    """``127.0.0.1:PORT/test/debian:<TOKEN>``: the Debian base pushed to a local registry."""
    from registry_util import local_registry, missing_tools, push_rootfs

    missing = missing_tools()
    if missing:
        pytest.skip(f"registry tests need {', '.join(missing)} (scripts/system-deps installs them)")
    with local_registry(tmp_path_factory.mktemp("registry")) as host:
        ref = f"{host}/test/debian:{TOKEN}"
        asyncio.run(
            push_rootfs(
                base_layer_fs, ref, env={"FROM_REGISTRY": "yes"}, workdir="/srv", timeout=400
            )
        )
        yield ref


REGISTRY_APP = """\
image = ketch.Image.from_registry("{ref}")
image_py = ketch.Image.from_registry("{ref}", add_python="3.11")
app = ketch.App("sandbox-registry")


def describe():
    return {{
        "FROM_REGISTRY": os.environ.get("FROM_REGISTRY"),
        "cwd": os.getcwd(),
        "python": list(sys.version_info[:2]),
        "nodename": os.uname().nodename,
    }}


@app.function(image=image)
def plain():
    return describe()


@app.function(image=image_py)
def with_python():
    return describe()


@app.local_entrypoint()
def main():
    show("plain", plain.remote)
    show("with_python", with_python.remote)
"""

REGISTRY_WRONG_PYTHON_APP = """\
image = ketch.Image.from_registry("{ref}", add_python="3.13")
app = ketch.App("sandbox-registry-313")


@app.function(image=image)
def never():
    return "ran"


@app.local_entrypoint()
def main():
    show("never", never.remote)
"""


@pytest.mark.timeout(FIRST_BUILD_S + 300)
def test_from_registry(sandbox_env, apps, registry_ref):
    run = run_app(
        sandbox_env,
        write_app(apps, "registry_app", REGISTRY_APP.format(ref=registry_ref)),
        timeout=300,
    )
    run.proc.check()
    assert f"from_registry {registry_ref}" in run.proc.output, run.proc.describe()
    plain = run.value("plain")
    assert plain["FROM_REGISTRY"] == "yes", plain
    assert plain["cwd"] == "/srv", plain
    assert plain["python"] == [3, 11], plain
    assert plain["nodename"].startswith("ketch-"), plain
    with_python = run.value("with_python")
    assert f"from_registry {registry_ref} + python 3.11" in run.proc.output, run.proc.describe()
    assert with_python["FROM_REGISTRY"] == "yes" and with_python["cwd"] == "/srv", with_python
    assert with_python["python"] == [3, 11], with_python


@pytest.mark.timeout(FIRST_BUILD_S + 300)
def test_from_registry_add_python_unavailable(sandbox_env, apps, registry_ref):
    app = write_app(apps, "registry_313", REGISTRY_WRONG_PYTHON_APP.format(ref=registry_ref))
    proc = sandbox_env.cli("run", app, timeout=300)
    assert proc.returncode not in (0, None), proc.describe()
    assert "ImageBuildError" in proc.output, proc.describe()
    assert "add_python='3.13'" in proc.output, proc.describe()
    assert "3.11" in proc.output, proc.describe()
    assert "RESULT" not in proc.stdout, proc.describe()


DOCKERFILE = """\
FROM {ref}
ARG FLAVOR=vanilla
ENV DOCKER_FLAVOR=${{FLAVOR}} DOCKER_MODE=e2e
WORKDIR /opt/dock
RUN echo "ran with $FLAVOR" > run.txt && echo "{token}-dockerfile"
COPY context.txt ./context.txt
CMD ["python3", "-c", "print('CMD-SHOULD-NOT-RUN')"]
"""

DOCKERFILE_APP = """\
from pathlib import Path

image = ketch.Image.from_dockerfile(
    Path(__file__).resolve().parent / "Dockerfile", build_args={"FLAVOR": "chocolate"}
)
app = ketch.App("sandbox-dockerfile")


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


@app.function(image=image)
def inspect():
    return {
        "FROM_REGISTRY": os.environ.get("FROM_REGISTRY"),
        "DOCKER_FLAVOR": os.environ.get("DOCKER_FLAVOR"),
        "DOCKER_MODE": os.environ.get("DOCKER_MODE"),
        "cwd": os.getcwd(),
        "run": read("/opt/dock/run.txt"),
        "context": read("/opt/dock/context.txt"),
    }


@app.local_entrypoint()
def main():
    show("notes", lambda: image.notes)
    show("inspect", inspect.remote)
"""


@pytest.mark.timeout(FIRST_BUILD_S + 300)
def test_from_dockerfile(sandbox_env, apps, registry_ref):
    folder = apps / "dockerfile"
    folder.mkdir()
    (folder / "Dockerfile").write_text(DOCKERFILE.format(ref=registry_ref, token=TOKEN))
    (folder / "context.txt").write_text("from the build context\n")
    run = run_app(sandbox_env, write_app(folder, "dockerfile_app", DOCKERFILE_APP), timeout=300)
    run.proc.check()
    assert f"{TOKEN}-dockerfile" in run.proc.stderr, run.proc.describe()
    assert any("CMD is ignored" in note for note in run.value("notes")), run.value("notes")
    assert "CMD-SHOULD-NOT-RUN" not in run.proc.output
    seen = run.value("inspect")
    assert seen == {
        "FROM_REGISTRY": "yes",
        "DOCKER_FLAVOR": "chocolate",
        "DOCKER_MODE": "e2e",
        "cwd": "/opt/dock",
        "run": "ran with chocolate",
        "context": "from the build context",
    }, seen


# --- ketch image list | rm | prune ---------------------------------------------------------------

LIST_APP = """\
image = (
    ketch.Image.debian_slim("3.11")
    .run_commands("echo {token}-list-1")
    .run_commands("echo {token}-list-2")
)
app = ketch.App("sandbox-image-cmd")


@app.function(image=image)
def probe() -> str:
    return "ran"


@app.local_entrypoint()
def main():
    show("probe", probe.remote)
"""


@pytest.mark.timeout(FIRST_BUILD_S + 120)
def test_image_list_rm_prune(sandbox_env, apps):
    commands = [f"echo {TOKEN}-list-1", f"echo {TOKEN}-list-2"]
    base, first, second = image_hashes(*commands)
    app = write_app(apps, "image_cmd", LIST_APP.format(token=TOKEN))
    run_app(sandbox_env, app, timeout=FIRST_BUILD_S).proc.check()
    assert layer_path(first).is_dir() and layer_path(second).is_dir()

    listing = sandbox_env.cli("image", "list", timeout=60).check().stdout
    rows = {line.split()[0]: line for line in listing.splitlines()[1:] if line.strip()}
    assert f"run_commands {commands[0]}" in rows.get(first[:12], ""), listing
    assert f"run_commands {commands[1]}" in rows.get(second[:12], ""), listing
    assert rows[second[:12]].split()[1] == first[:12], "the parent column is wrong\n" + listing
    assert "debian_slim python 3.11" in rows.get(base[:12], ""), listing
    assert re.search(r"^\d+ layers, .* in ", listing.splitlines()[-1]), listing

    # rm takes the layer and everything built on it.
    removed = sandbox_env.cli("image", "rm", first[:12], timeout=60).check().stdout
    assert "removed 2 layer(s)" in removed and first[:12] in removed and second[:12] in removed, (
        removed
    )
    assert not layer_path(first).exists() and not layer_path(second).exists()
    assert layer_path(base).is_dir()
    listing = sandbox_env.cli("image", "list", timeout=60).check().stdout
    assert first[:12] not in listing and second[:12] not in listing, listing

    missing = sandbox_env.cli("image", "rm", first[:12], timeout=60)
    assert missing.returncode not in (0, None) and "no single cached layer" in missing.output, (
        missing.describe()
    )

    # The next run builds both again.
    rebuilt = run_app(sandbox_env, app)
    rebuilt.proc.check()
    assert rebuilt.value("probe") == "ran"
    assert build_steps(rebuilt.proc.output) == {1: "cached", 2: "built", 3: "built"}, (
        rebuilt.proc.describe()
    )

    # prune removes the layer left unused (its ``used`` file set back in time) and keeps the
    # base, used just now. The cache is shared, so the cut-off is far enough back (a year) that
    # only the layer aged here can be old enough; ``1d`` would also prune other people's layers.
    long_ago = time.time() - 400 * 86400
    os.utime(layer_path(second) / "used", (long_ago, long_ago))
    pruned = sandbox_env.cli("image", "prune", "--older-than", "365d", timeout=120).check().stdout
    assert re.search(r"removed [1-9]\d* layer\(s\)", pruned), pruned
    assert not layer_path(second).exists(), pruned
    assert layer_path(first).is_dir() and layer_path(base).is_dir(), pruned

    bad = sandbox_env.cli("image", "prune", "--older-than", "soon", timeout=60)
    assert bad.returncode not in (0, None) and "--older-than" in bad.output, bad.describe()


# --- web endpoints in sandboxes -----------------------------------------------------------

SANDBOX_WEB = """
import ketch

app = ketch.App("sandbox-web", image=ketch.Image.debian_slim().pip_install("fastapi"))


@app.function()
@ketch.fastapi_endpoint()
def where(name: str = "x") -> dict:
    import os

    return {"hello": name, "source_at_root": os.path.exists("/root/sandbox_web.py")}


@app.function()
@ketch.asgi_app()
def sock():
    from fastapi import FastAPI, WebSocket

    web = FastAPI()

    @web.websocket("/ws")
    async def ws(s: WebSocket):
        await s.accept()
        await s.send_text("hi from the sandbox: " + await s.receive_text())
        await s.close()

    return web
"""


def test_web_endpoints_and_websockets_in_sandboxes(sandbox_env, tmp_path):
    import json
    import urllib.request

    import aiohttp

    app_file = tmp_path / "sandbox_web.py"
    app_file.write_text(SANDBOX_WEB)
    deployed = sandbox_env.cli("deploy", str(app_file), timeout=400).check()
    urls = dict(re.findall(r"- (\S+) => (http://127\.0\.0\.1:\d+)", deployed.stdout))
    with urllib.request.urlopen(f"{urls['where']}/?name=bwrap", timeout=120) as resp:
        assert json.loads(resp.read()) == {"hello": "bwrap", "source_at_root": True}

    async def talk() -> str:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(urls["sock"].replace("http://", "ws://") + "/ws") as ws:
                await ws.send_str("ping")
                return (await ws.receive(timeout=120)).data

    assert asyncio.run(talk()) == "hi from the sandbox: ping"
    sandbox_env.cli("app", "stop", "sandbox-web").check()
