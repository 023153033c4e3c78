"""Running apps: `ketch run`, local entrypoints with options, plain scripts, map and friends."""

from __future__ import annotations

import re
import shutil
import tempfile

import pytest

pytestmark = pytest.mark.e2e


def test_hello_world(ketch_env):
    proc = ketch_env.cli("run", "examples/hello_world.py").check()
    assert "remote: 16" in proc.stdout, proc.describe()
    assert "local: 25" in proc.stdout, proc.describe()
    assert "map: [0, 1, 4, 9, 16]" in proc.stdout, proc.describe()


def test_hello_world_container_output_reaches_terminal(ketch_env):
    proc = ketch_env.cli("run", "examples/hello_world.py").check()
    # square.remote(4) printed this inside a container; local(5) printed its own line in this process.
    assert re.search(r"squaring 4 in container pid \d+", proc.output), proc.describe()
    remote_pid = int(re.search(r"squaring 4 in container pid (\d+)", proc.output).group(1))
    local_pid = int(re.search(r"squaring 5 in container pid (\d+)", proc.output).group(1))
    assert remote_pid != local_pid, "remote() ran in the calling process"


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


def test_plain_script_with_app_run(ketch_env):
    proc = ketch_env.python("examples/plain_script.py").check()
    assert "CUBE: 27" in proc.stdout, proc.describe()
    assert "CUBES: [1, 8, 27]" in proc.stdout, proc.describe()


def test_function_env_option(ketch_env):
    proc = ketch_env.python("examples/plain_script.py").check()
    assert "ENV: bonjour" in proc.stdout, proc.describe()


def test_serialized_function_defined_in_main_block(ketch_env):
    proc = ketch_env.python("examples/plain_script.py").check()
    assert "SCALED: 42" in proc.stdout, proc.describe()


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
    assert map_run.value("map_ordered") == [2.0, 0.2, 1.0]


def test_map_order_outputs_false_gives_completion_order(map_run):
    assert map_run.value("map_unordered") == [0.2, 1.0, 2.0]


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
    value = aio_run.value("gather_remote")
    assert value["results"] == [1.0] * 5
    assert value["elapsed"] < 3.5, f"5 concurrent 1s calls took {value['elapsed']:.1f}s"
