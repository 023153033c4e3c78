"""Running apps: `ketch run`, local entrypoints with options, plain scripts, map and friends."""

from __future__ import annotations

import re
import shutil
import tempfile

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hello_run(ketch_env):
    return ketch_env.cli("run", "examples/hello_world.py").check()


def test_hello_world(hello_run):
    proc = hello_run
    assert "remote: 16" in proc.stdout, proc.describe()
    assert "local: 25" in proc.stdout, proc.describe()
    assert "map: [0, 1, 4, 9, 16]" in proc.stdout, proc.describe()


def test_hello_world_container_output_reaches_terminal(hello_run):
    proc = hello_run
    # square.remote(4) printed this inside a container; local(5) printed its own line in this process.
    assert re.search(r"squaring 4 in container pid \d+", proc.output), proc.describe()
    remote_pid = int(re.search(r"squaring 4 in container pid (\d+)", proc.output).group(1))
    local_pid = int(re.search(r"squaring 5 in container pid (\d+)", proc.output).group(1))
    assert remote_pid != local_pid, "remote() ran in the calling process"


def test_ephemeral_app_stops_with_run(ketch_env, hello_run):
    def stopped():
        record = ketch_env.app_record("hello-world")
        return record is not None and record["state"] != "running" and record["n_containers"] == 0

    assert ketch_env.wait_until(stopped, 15), ketch_env.app_record("hello-world")


def test_entrypoint_options(ketch_env):
    proc = ketch_env.cli(
        "run", "examples/entrypoint_args.py::main", "--n", "3", "--name", "ketch"
    ).check()
    assert "GREETING: hello ketch hello ketch hello ketch" in proc.stdout, proc.describe()
    assert "N_TYPE: int" in proc.stdout, proc.describe()


def test_entrypoint_defaults_and_bool_flag(ketch_env):
    proc = ketch_env.cli("run", "examples/entrypoint_args.py::main", "--shout").check()
    assert "GREETING: HELLO WORLD" in proc.stdout, proc.describe()


def test_second_entrypoint_selected_by_name(ketch_env):
    proc = ketch_env.cli("run", "examples/entrypoint_args.py::other").check()
    assert "OTHER-ENTRYPOINT ran" in proc.stdout, proc.describe()
    assert "GREETING" not in proc.stdout


def test_bad_entrypoint_option_is_rejected(ketch_env):
    proc = ketch_env.cli("run", "examples/entrypoint_args.py::main", "--n", "not-a-number")
    assert proc.returncode != 0, proc.describe()
    assert "GREETING" not in proc.stdout


def test_missing_entrypoint_name_is_an_error(ketch_env):
    proc = ketch_env.cli("run", "examples/entrypoint_args.py::no_such_thing")
    assert proc.returncode != 0, proc.describe()
    assert "no_such_thing" in proc.output, proc.describe()


def test_concurrent_runs_share_one_server(ketch_env):
    ketch_env.cli("server", "start", timeout=60).check()
    runs = [
        ketch_env.popen("run", "examples/entrypoint_args.py::main", "--n", str(i + 1))
        for i in range(4)
    ]
    for i, run in enumerate(runs):
        done = run.wait(timeout=90)
        assert done.returncode == 0 and not done.timed_out, done.describe()
        assert f"GREETING: {' '.join(['hello world'] * (i + 1))}" in done.stdout, done.describe()


def test_stopping_a_running_app_ends_its_run(ketch_env):
    run = ketch_env.popen("run", "examples/durable_map.py", "--n", "100000")
    assert run.wait_for_line("FIRST-RESULT", 60), run.text()
    ketch_env.cli("app", "stop", "durable-map").check()
    done = run.wait(timeout=30)
    assert not done.timed_out, f"`ketch run` kept going after `ketch app stop`\n{done.describe()}"
    assert done.returncode != 0, done.describe()


@pytest.fixture(scope="module")
def plain_script_run(ketch_env):
    return ketch_env.python("examples/plain_script.py").check()


def test_plain_script_with_app_run(plain_script_run):
    proc = plain_script_run
    assert "CUBE: 27" in proc.stdout, proc.describe()
    assert "CUBES: [1, 8, 27]" in proc.stdout, proc.describe()


def test_function_env_option(plain_script_run):
    assert "ENV: bonjour" in plain_script_run.stdout, plain_script_run.describe()


def test_serialized_function_defined_in_main_block(plain_script_run):
    assert "SCALED: 42" in plain_script_run.stdout, plain_script_run.describe()


# --- map, starmap, for_each, spawn_map, remote_gen ------------------------------


@pytest.fixture(scope="module")
def map_run(ketch_env):
    workdir = tempfile.mkdtemp(prefix="ketch-e2e-map-", dir="/tmp")
    try:
        run = ketch_env.run_example("map_features.py", "--workdir", workdir, timeout=100)
        run.proc.check()
        yield run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_map_multiple_iterables(map_run):
    assert map_run.value("map") == [10, 12, 14, 16, 18]


def test_map_kwargs(map_run):
    assert map_run.value("map_kwargs") == [100, 101, 102]


def test_starmap(map_run):
    assert map_run.value("starmap") == [3, 7, 11]


def test_map_empty(map_run):
    assert map_run.value("map_empty") == []


def test_map_keeps_input_order(map_run):
    # The inputs finish in the order 0, 1, 2 (each waits for the lower ones).
    assert map_run.value("map_ordered") == [2, 0, 1]


def test_map_order_outputs_false_gives_completion_order(map_run):
    assert map_run.value("map_unordered") == [0, 1, 2]


def test_map_return_exceptions(map_run):
    results = map_run.value("map_return_exceptions")
    assert results[0] == 0 and results[2] == 2, results
    assert "ValueError" in results[1] and "odd input 1" in results[1], results
    assert "ValueError" in results[3] and "odd input 3" in results[3], results


def test_map_raises_first_error(map_run):
    assert map_run.value("map_raises").startswith("ValueError: odd input")


def test_for_each(map_run):
    value = map_run.value("for_each")
    assert value["returned"] is None
    assert value["files"] == ["touched-0", "touched-1", "touched-2"]


def test_spawn_map(map_run):
    value = map_run.value("spawn_map")
    assert value["files"] == ["touched-10", "touched-11"]


def test_remote_gen(map_run):
    assert map_run.value("remote_gen") == [4, 3, 2, 1]


def test_remote_gen_streams_values_as_yielded(map_run):
    # The generator yields a value only once the caller has acknowledged the one before:
    # buffered until the generator ended, no value would ever arrive.
    assert map_run.value("remote_gen_streams") == [0, 1, 2, 3]


def test_remote_gen_error_after_some_values(map_run):
    value = map_run.value("remote_gen_error")
    assert value == {"received": [0, 1], "raised": "generator broke at 2"}, value


def test_calls_from_inside_a_container(map_run):
    assert map_run.value("nested_calls") == {"mapped": [0, 2, 4, 6], "spawned": 101, "remote": 5}


def test_async_function_called_from_sync_code(map_run):
    assert map_run.value("async_function_remote") == 3
    assert map_run.value("async_function_map") == [0, 2, 4]


def test_async_generator_function(map_run):
    assert map_run.value("async_generator") == [3, 2, 1]


def test_concurrent_async_function(map_run):
    # Each input waits (on the event loop) until all eight are running: False if they never were.
    assert map_run.value("async_concurrent") == [True] * 8


def test_run_missing_file(ketch_env):
    proc = ketch_env.cli("run", "examples/does_not_exist.py")
    assert proc.returncode != 0, proc.describe()
    assert "does_not_exist.py" in proc.output, proc.describe()


def test_run_file_that_fails_to_import(ketch_env, tmp_path):
    broken = tmp_path / "broken_app.py"
    broken.write_text(
        "import ketch\napp = ketch.App('broken')\nraise RuntimeError('import-time failure')\n"
    )
    proc = ketch_env.cli("run", str(broken))
    assert proc.returncode != 0, proc.describe()
    assert "import-time failure" in proc.output, proc.describe()
    deploy = ketch_env.cli("deploy", str(broken))
    assert deploy.returncode != 0, deploy.describe()
    assert ketch_env.app_record("broken") is None, "a failed deploy left an app behind"


def test_app_importing_a_sibling_module(ketch_env, tmp_path):
    # Containers import the app file by path, so its directory must be importable there too.
    project = tmp_path / "project"
    project.mkdir()
    (project / "shapes.py").write_text("def area(w, h):\n    return w * h\n")
    (project / "geometry_app.py").write_text(
        "import ketch\n"
        "from shapes import area\n"
        "app = ketch.App('geometry')\n"
        "@app.function()\n"
        "def room(w: int, h: int) -> int:\n"
        "    return area(w, h)\n"
        "@app.local_entrypoint()\n"
        "def main():\n"
        "    print('AREA', room.remote(3, 4))\n"
    )
    proc = ketch_env.cli("run", "geometry_app.py", cwd=project).check()
    assert "AREA 12" in proc.stdout, proc.describe()
    elsewhere = ketch_env.cli("run", str(project / "geometry_app.py"), cwd=tmp_path).check()
    assert "AREA 12" in elsewhere.stdout, elsewhere.describe()


# --- .aio ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def aio_run(ketch_env):
    run = ketch_env.run_example("async_calls.py", timeout=100)
    run.proc.check()
    return run


def test_remote_aio(aio_run):
    assert aio_run.value("remote_aio") == 42


def test_map_aio(aio_run):
    assert aio_run.value("map_aio") == [0, 2, 4, 6, 8]


def test_starmap_aio(aio_run):
    assert aio_run.value("starmap_aio") == [0.1, 0.2]


def test_spawn_aio(aio_run):
    assert aio_run.value("spawn_aio") == 100


def test_remote_gen_aio(aio_run):
    assert aio_run.value("remote_gen_aio") == [3, 2, 1]


def test_asyncio_gather_runs_calls_concurrently(aio_run):
    # Each call waits until all five are running: False if they never were at once.
    assert aio_run.value("gather_remote") == [True] * 5


RUN_ONE = """
import ketch

app = ketch.App("run-one")


@app.function()
def plain(name: str = "x"):
    return f"plain {name}"


@app.function()
async def coro(name: str = "x"):
    return f"async {name}"
"""


def test_ketch_run_calls_one_function_sync_or_async(ketch_env, tmp_path):
    """``ketch run FILE::fn`` prints the function's result, for an ``async def`` one too (it
    printed an un-awaited coroutine and exited 0); ``app.registered_functions`` holds
    the public Functions."""
    (tmp_path / "one.py").write_text(RUN_ONE)
    for name, want in (("plain", "plain z"), ("coro", "async z")):
        done = ketch_env.cli("run", f"one.py::{name}", "--name", "z", cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.describe()
        assert done.stdout.strip().splitlines()[-1] == want, done.describe()
        assert "coroutine" not in done.stdout + done.stderr, done.describe()


IDS_APP = """
import asyncio
import ketch

app = ketch.App("ids")
vol = ketch.Volume.from_name("ids-vol", create_if_missing=True, version=2, environment_name="main")


@app.function()
def sync_ids(x):
    return ketch.is_local(), ketch.current_input_id(), ketch.current_function_call_id()


@app.function()
@ketch.concurrent(max_inputs=4)
async def async_ids(x):
    await asyncio.sleep(0.2)  # overlapping inputs: each keeps its own ids
    return ketch.current_input_id(), ketch.current_function_call_id()


@app.local_entrypoint()
def main():
    with ketch.enable_output():
        print("LOCAL", ketch.is_local(), ketch.current_input_id())
        local, input_id, call_id = sync_ids.remote(1)
        print("SYNC", local, input_id.startswith("in-"), call_id.startswith("fc-"))
        spawned = sync_ids.spawn(2)
        print("SPAWNED", spawned.get()[2] == spawned.object_id)
        got = list(async_ids.map(range(4)))
        print("ASYNC", len({i for i, _ in got}), len({c for _, c in got}))
"""


def test_current_ids_is_local_and_modal_only_arguments(ketch_env, tmp_path):
    """``is_local()``, ``current_input_id()`` and ``current_function_call_id()`` as Modal has
    them (concurrent async inputs each see their own); ``enable_output()`` and
    ``from_name(version=, environment_name=)`` are accepted."""
    (tmp_path / "ids.py").write_text(IDS_APP)
    done = ketch_env.cli("run", "ids.py", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.describe()
    out = done.stdout
    assert "LOCAL True None" in out and "SYNC False True True" in out, done.describe()
    assert "SPAWNED True" in out and "ASYNC 4 1" in out, done.describe()


MODAL_APP = """
import modal
import modal.experimental
from modal.exception import NotFoundError
from modal import App, Image

app = modal.App("modal-alias")
image = Image.debian_slim()
q = modal.Queue.from_name("alias-q", create_if_missing=True)


@app.function(image=image, retries=modal.Retries(max_retries=0))
def square(x: int) -> int:
    import modal as m
    assert m.App is App
    return x * x


@app.local_entrypoint()
def main():
    print("SQUARES", list(square.map(range(4))))
    q.put("x")
    print("QUEUE", q.get(), q.get(block=False))
    try:
        modal.Dict.from_name("never-made-alias").get("k")
    except NotFoundError:
        print("NOTFOUND ok")
    try:
        __import__("importlib").import_module("modal.mount")
    except ModuleNotFoundError as exc:
        print("MISSING", "no counterpart" in str(exc))
"""


def test_a_modal_app_runs_unchanged_with_import_modal(ketch_env, tmp_path):
    """``import modal``, ``from modal import ...`` and public submodules (``modal.exception``,
    ``modal.experimental``) are ketch under ``ketch run`` and in the container; a Modal
    submodule ketch has no counterpart of fails saying so."""
    (tmp_path / "m.py").write_text(MODAL_APP)
    done = ketch_env.cli("run", "m.py", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.describe()
    for line in ("SQUARES [0, 1, 4, 9]", "QUEUE x None", "NOTFOUND ok", "MISSING True"):
        assert line in done.stdout, done.describe()


LOOKUP = """
import ketch

try:
    ketch.App.lookup("never-deployed-app")
except ketch.exception.NotFoundError as exc:
    print("MISSING", "create_if_missing" in str(exc))
app = ketch.App.lookup("lookup-box", create_if_missing=True)
again = ketch.App.lookup("lookup-box")
print("SAME", app.app_id == again.app_id, app.app_id.startswith("ap-"))
sb = ketch.Sandbox.create("echo", "from a looked-up app", app=app)
sb.wait()
print("SANDBOX", sb.stdout.read().strip())
"""


def test_app_lookup_creates_once_and_holds_sandboxes(ketch_env, tmp_path):
    """``App.lookup(name, create_if_missing=True)`` (Modal's, for ``Sandbox.create(app=)``)
    deploys an empty app once and finds it after; without the flag a missing one is a
    clear ``NotFoundError``."""
    (tmp_path / "lookup.py").write_text(LOOKUP)
    done = ketch_env.python(str(tmp_path / "lookup.py"), timeout=120)
    assert done.returncode == 0, done.describe()
    for line in ("MISSING True", "SAME True True", "SANDBOX from a looked-up app"):
        assert line in done.stdout, done.describe()
    assert "lookup-box" in ketch_env.cli("app", "list").check().stdout
