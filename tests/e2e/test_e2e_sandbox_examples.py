"""The example apps again, inside sandbox containers (the default runtime where bwrap runs).

The core suites run on the ``local`` runtime (see tests/conftest.py); these
check that what they prove about calls, errors and classes holds unchanged in
isolated containers, where the app's source lives at ``/root`` and every
container has its own pid namespace.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from ketch_testing import KetchEnv

pytestmark = pytest.mark.e2e


def _sandbox_ok() -> tuple[bool, str]:
    from ketch.worker import isolate

    support = isolate.support()
    return support.ok, support.reason


@pytest.fixture(scope="module")
def boxed_env():
    ok, reason = _sandbox_ok()
    if not ok:
        pytest.skip(f"the sandbox runtime cannot run here: {reason}")
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-box-", dir="/tmp"))
    env = KetchEnv(home, runtime="sandbox")
    yield env
    env.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(420)
def test_hello_world_in_sandboxes(boxed_env):
    # The first run may build the Debian base image (about a minute on a fresh machine).
    proc = boxed_env.cli("run", "examples/hello_world.py", timeout=400).check()
    assert "remote: 16" in proc.stdout and "map: [0, 1, 4, 9, 16]" in proc.stdout, proc.describe()
    status = boxed_env.cli("server", "status").check()
    assert "sandbox" in status.stdout and "bubblewrap" in status.stdout, status.describe()


@pytest.fixture(scope="module")
def boxed_errors(boxed_env):
    run = boxed_env.run_example("errors.py::main", timeout=300)
    run.proc.check()
    return run


@pytest.mark.timeout(320)
def test_remote_exceptions_and_source_lines(boxed_errors):
    value = boxed_errors.value("value_error")
    assert value["type"] == "ValueError" and value["message"] == "bad value 42", value
    # The container compiles the app under its host path, so the client shows the line.
    assert "REMOTE-RAISE-LINE" in value["traceback"], value["traceback"]
    assert boxed_errors.value("custom_error")["type"] == "CustomError"
    assert boxed_errors.value("map_error")["message"] == "bad value 7"


@pytest.mark.timeout(200)
def test_sibling_modules_and_packages_are_importable(boxed_env, tmp_path):
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "shapes.py").write_text("def area(w, h):\n    return w * h\n")
    (project / "pkg" / "__init__.py").write_text("SCALE = 10\n")
    (project / "notes").mkdir()
    (project / "notes" / "secret.txt").write_text("stays on the host")
    (project / "geometry_app.py").write_text(
        "import os\n"
        "import ketch\n"
        "from shapes import area\n"
        "from pkg import SCALE\n"
        "app = ketch.App('geometry')\n"
        "@app.function()\n"
        "def room(w: int, h: int) -> tuple:\n"
        "    return area(w, h) * SCALE, sorted(os.listdir('/root')), __file__\n"
        "@app.local_entrypoint()\n"
        "def main():\n"
        "    print('ROOM', room.remote(3, 4))\n"
    )
    proc = boxed_env.cli("run", "geometry_app.py", cwd=project, timeout=180).check()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ROOM"))
    assert "120" in line and "'geometry_app.py'" in line and "'shapes.py'" in line, line
    assert "'pkg'" in line and "notes" not in line, line
    assert "/root/geometry_app.py" in line, line


@pytest.mark.timeout(300)
def test_classes_in_sandboxes(boxed_env, tmp_path):
    run = boxed_env.run_example("cls_example.py", "--workdir", str(tmp_path), timeout=280)
    run.proc.check()
    one_a, one_b, two = run.value("one_a"), run.value("one_b"), run.value("two")
    # Same parameters share a container (and its @enter state); others get their own.
    assert one_a["container"] == one_b["container"] != two["container"], (one_a, one_b, two)
    assert isinstance(run.value("second_method"), int), run.proc.describe()
    assert run.value("map") and run.value("required_parameter"), run.proc.describe()
    assert "InvalidError" in str(run.value("missing_parameter")), run.proc.describe()


STDLIB_NAMED_APP = (
    "import ketch\n"
    "app = ketch.App('stdlib-named')\n"
    "@app.function()\n"
    "def hello() -> str:\n"
    "    return 'hi from ' + __name__\n"
    "@app.local_entrypoint()\n"
    "def main():\n"
    "    print('SAID', hello.remote())\n"
)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("runtime", ["local", "sandbox"])
def test_app_file_named_like_a_stdlib_module(runtime, boxed_env, ketch_env, tmp_path):
    # secrets.py / queue.py must not shadow the standard library for ketch in the container.
    env = boxed_env if runtime == "sandbox" else ketch_env
    app = tmp_path / "secrets.py"
    app.write_text(STDLIB_NAMED_APP)
    proc = env.cli("run", str(app), cwd=tmp_path, timeout=180).check()
    assert "SAID hi from secrets" in proc.stdout, proc.describe()


@pytest.mark.timeout(200)
def test_secrets_example_in_sandboxes(boxed_env):
    boxed_env.cli("secret", "create", "example-api", "API_KEY=s3cr3t", "--force").check()
    run = boxed_env.run_example("secrets_example.py", timeout=180)
    assert run.value("secrets") == {"api_key_length": 6, "region": "eu-west", "debug": "1"}


# -- the sandbox examples (issue 16) ---------------------------------------------------


@pytest.mark.timeout(300)
def test_sandbox_code_interpreter_keeps_state_across_cells(boxed_env):
    run = boxed_env.run_example("sandbox_code_interpreter.py", timeout=280)
    value = run.value("code_interpreter")
    assert value["outputs"] == ["", "28.27\n", "", "4 50.27\n"], run.proc.describe()
    assert value["failed_cell"] == [True, True, False, True] and value["error_named"]


@pytest.mark.timeout(300)
def test_sandbox_pool_runs_jobs_across_sandboxes(boxed_env):
    run = boxed_env.run_example("sandbox_pool.py", "--jobs", "8", timeout=280)
    value = run.value("pool")
    assert value["results"] == [f"{n} {sum(i * i for i in range(n))}" for n in range(1, 9)]
    assert value["listed_all"] is True


@pytest.mark.timeout(300)
def test_sandbox_http_tunnel_serves_a_blocked_sandbox(boxed_env):
    value = boxed_env.run_example("sandbox_http_tunnel.py", timeout=280).value("http_tunnel")
    assert value == {"paths": ["/item/0", "/item/1", "/item/2"], "outbound_blocked": True}


@pytest.mark.timeout(300)
def test_sandbox_snapshot_reused_as_an_image(boxed_env):
    value = boxed_env.run_example("sandbox_snapshot.py", timeout=280).value("snapshot")
    assert value == {
        "sandbox": "tool v1: hello\nconfigured by the first sandbox\n",
        "function": "configured by the first sandbox\n",
    }
