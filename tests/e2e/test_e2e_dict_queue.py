"""Dicts and Queues end to end: between containers, from the CLI, across restarts."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import textwrap
from pathlib import Path

import pytest
from ketch_testing import SHOW, ExampleRun, KetchEnv

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_queue_feeds_a_blocked_consumer_and_dict_collects(ketch_env):
    run = ketch_env.run_example("dict_queue.py", timeout=150)
    value = run.value("dict_queue")
    assert value["seen"] == [0, 1, 2, 3, 4], value
    assert value["squares"] == {str(i): i * i for i in range(5)}, value
    assert value["two_containers"] and value["dict_len"] == 5, value


@pytest.mark.timeout(300)
def test_dict_and_queue_from_sandbox_containers():
    from ketch.worker import isolate

    if not isolate.support().ok:
        pytest.skip("the sandbox runtime cannot run here")
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-dq-", dir="/tmp"))
    env = KetchEnv(home, runtime="sandbox")
    try:
        run = ExampleRun.parse(env.cli("run", "examples/dict_queue.py", timeout=280))
        assert run.value("dict_queue")["seen"] == [0, 1, 2, 3, 4], run.proc.describe()
    finally:
        env.close()
        shutil.rmtree(home, ignore_errors=True)


SCRIPT = SHOW + textwrap.dedent(
    """
    import json, queue, sys, time
    import ketch
    from ketch.exception import NotFoundError, PayloadTooLargeError

    mode = sys.argv[1]
    d = ketch.Dict.from_name("durable-d", create_if_missing=True)
    q = ketch.Queue.from_name("durable-q", create_if_missing=True)
    if mode == "write":
        d.update({"a": 1, "b": [2, 3]})
        d[("tuple", 1)] = {"nested": True}
        q.put_many(["x", "y", "z"])
        q.put("p1", partition="p")
        show("written", lambda: [len(d), q.len(), q.len(total=True)])
    elif mode == "read":
        show("dict", lambda: [d["a"], d["b"], d[("tuple", 1)], sorted(map(str, d.keys()))])
        show("queue", lambda: [q.get(), q.get_many(5), q.get(partition="p")])
        show("empty_nonblocking", lambda: q.get(block=False))
        show("empty_timeout", lambda: q.get(timeout=0.5))
    elif mode == "errors":
        show("missing_dict", lambda: ketch.Dict.from_name("never-made").get("k"))
        show("missing_queue", lambda: ketch.Queue.from_name("never-made").put(1))
        show("too_big_value", lambda: d.put("big", b"x" * (65 * 2**20)))
        show("too_big_item", lambda: q.put(b"x" * (65 * 2**20)))
        show("key_error", lambda: d["missing"])
        show("bad_name", lambda: ketch.Dict.from_name("bad name!").get(1))
    """
)


def _restart_kill9(env: KetchEnv) -> None:
    pid = env.server_pid()
    os.kill(pid, signal.SIGKILL)
    assert env.wait_until(lambda: not env.pid_alive(pid), 10)
    env.cli("server", "start", timeout=60).check()


@pytest.mark.timeout(240)
def test_state_survives_stop_start_and_kill9(fresh_ketch_env, tmp_path):
    env = fresh_ketch_env
    script = tmp_path / "dq.py"
    script.write_text(SCRIPT)
    written = ExampleRun.parse(env.python(script, "write", timeout=60))
    assert written.value("written") == [3, 3, 4], written.proc.describe()

    env.cli("server", "stop", timeout=30).check()
    env.cli("server", "start", timeout=60).check()
    listing = env.cli("dict", "items", "durable-d").check().stdout
    assert "'a': 1" in listing and "'b': [2, 3]" in listing, listing
    assert env.cli("queue", "len", "durable-q", "--total").check().stdout.strip() == "4"

    _restart_kill9(env)
    read = ExampleRun.parse(env.python(script, "read", timeout=60))
    assert read.value("dict") == [1, [2, 3], {"nested": True}, ["('tuple', 1)", "a", "b"]]
    assert read.value("queue") == ["x", ["y", "z"], "p1"], read.proc.describe()
    assert read.value("empty_nonblocking") is None, read.proc.describe()  # Modal's: None
    assert read.error("empty_timeout").startswith("Empty"), read.proc.describe()


@pytest.mark.timeout(180)
def test_clear_errors(ketch_env, tmp_path):
    script = tmp_path / "dq.py"
    script.write_text(SCRIPT)
    run = ExampleRun.parse(ketch_env.python(script, "errors", timeout=120))
    assert "NotFoundError" in run.error("missing_dict") and "never-made" in run.error(
        "missing_dict"
    )
    assert "NotFoundError" in run.error("missing_queue")
    assert "PayloadTooLargeError" in run.error("too_big_value") and "64 MiB" in run.error(
        "too_big_value"
    )
    assert "PayloadTooLargeError" in run.error("too_big_item")
    assert run.error("key_error").startswith("KeyError")
    assert "InvalidError" in run.error("bad_name")


@pytest.mark.timeout(120)
def test_cli_groups(ketch_env):
    cli = ketch_env.cli
    cli("dict", "create", "cli-dict").check()
    again = cli("dict", "create", "cli-dict")
    assert again.returncode == 1 and "AlreadyExistsError" in again.stderr, again.describe()
    assert "Traceback" not in again.stderr, again.describe()
    assert "cli-dict" in cli("dict", "list").check().stdout
    cli("queue", "create", "cli-queue").check()
    ketch_env.python(
        "-c",
        "import ketch; q = ketch.Queue.from_name('cli-queue'); q.put_many([1, 2]); "
        "d = ketch.Dict.from_name('cli-dict'); d['k'] = 'v'",
        timeout=60,
    ).check()
    assert cli("dict", "get", "cli-dict", "k").check().stdout.strip() == "'v'"
    assert cli("queue", "peek", "cli-queue").check().stdout.split() == ["1", "2"]
    assert cli("queue", "len", "cli-queue").check().stdout.strip() == "2"
    listing = cli("queue", "list").check().stdout
    assert "cli-queue" in listing, listing
    cli("queue", "clear", "cli-queue").check()
    assert cli("queue", "len", "cli-queue").check().stdout.strip() == "0"
    cli("dict", "clear", "cli-dict").check()
    cli("dict", "delete", "cli-dict", "--yes").check()
    cli("queue", "delete", "cli-queue", "--yes").check()
    gone = cli("dict", "get", "cli-dict", "k")
    assert gone.returncode == 1 and "NotFoundError" in gone.stderr, gone.describe()
