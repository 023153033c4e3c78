"""Deployed apps: `ketch deploy`, lookups from other processes, `ketch app list|logs|stop`, scaling."""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.e2e

APP = "deployed-demo"


@pytest.fixture(scope="module")
def deployed(ketch_env):
    ketch_env.cli("deploy", "examples/deployed_app.py", timeout=60).check()
    return ketch_env


def test_deploy_returns_and_function_is_callable(deployed):
    proc = deployed.python("examples/deployed_client.py", "call", "7").check()
    assert "SQUARE 7 = 49" in proc.stdout, proc.describe()


def test_function_from_name_inline(deployed):
    code = (
        "import ketch\n"
        f"f = ketch.Function.from_name({APP!r}, 'square')\n"
        "print('VALUES', f.remote(3), list(f.map([1, 2])))\n"
    )
    proc = deployed.python("-c", code).check()
    assert "VALUES 9 [1, 4]" in proc.stdout, proc.describe()


def test_cls_from_name(deployed):
    proc = deployed.python("examples/deployed_client.py", "greet", "bonjour", "ada").check()
    assert re.search(r"GREETING bonjour, ada! \(pid \d+\)", proc.stdout), proc.describe()


def test_spawned_call_fetched_from_another_process(deployed):
    spawned = deployed.python("examples/deployed_client.py", "spawn", "6", "8").check()
    ids = dict(re.findall(r"CALL (\d+) (\S+)", spawned.stdout))
    assert set(ids) == {"6", "8"}, spawned.describe()
    got = deployed.python("examples/deployed_client.py", "get", ids["6"], ids["8"]).check()
    assert f"RESULT {ids['6']} 36" in got.stdout, got.describe()
    assert f"RESULT {ids['8']} 64" in got.stdout, got.describe()


def test_lookup_of_missing_function_raises_not_found(deployed):
    code = (
        "import ketch\n"
        "try:\n"
        f"    ketch.Function.from_name({APP!r}, 'no_such_function').remote(1)\n"
        "except ketch.exception.NotFoundError as e:\n"
        "    print('NOT-FOUND', e)\n"
        "try:\n"
        "    ketch.Function.from_name('no-such-app', 'square').remote(1)\n"
        "except ketch.exception.NotFoundError as e:\n"
        "    print('NOT-FOUND', e)\n"
    )
    proc = deployed.python("-c", code).check()
    assert proc.stdout.count("NOT-FOUND") == 2, proc.describe()


def test_app_list_shows_deployed_app(deployed):
    proc = deployed.cli("app", "list").check()
    assert APP in proc.stdout, proc.describe()


def test_app_logs_shows_function_prints(deployed):
    deployed.python("examples/deployed_client.py", "call", "5").check()
    found = None

    def has_line():
        nonlocal found
        found = deployed.cli("app", "logs", APP, timeout=10, allow_timeout=True)
        return "DEPLOYED-SQUARE called with 5" in found.output

    assert deployed.wait_until(has_line, 20, interval=1), found.describe()


def test_redeploy_keeps_app_working(deployed):
    deployed.cli("deploy", "examples/deployed_app.py", timeout=60).check()
    proc = deployed.python("examples/deployed_client.py", "call", "11").check()
    assert "SQUARE 11 = 121" in proc.stdout, proc.describe()
    names = [a["name"] for a in deployed.rpc("AppList")["apps"] if a.get("state") != "stopped"]
    assert names.count(APP) == 1, f"two live apps named {APP} after redeploy: {names}"


def test_app_stop(deployed):
    in_flight = deployed.python(
        "-c",
        "import ketch\n"
        f"f = ketch.Function.from_name({APP!r}, 'slow_square')\n"
        "print('CALL', f.spawn(3, delay=60).object_id)\n",
    ).check()
    call_id = re.search(r"CALL (\S+)", in_flight.stdout).group(1)
    time.sleep(1.0)
    deployed.cli("app", "stop", APP).check()
    record = deployed.app_record(APP)
    assert record is None or record["state"] != "running" and record["state"] != "deployed", record
    code = (
        "import ketch\n"
        "try:\n"
        f"    ketch.Function.from_name({APP!r}, 'square').remote(2)\n"
        "except ketch.exception.Error as e:\n"
        "    print('STOPPED', type(e).__name__, e)\n"
        "else:\n"
        "    print('STILL-RUNNING')\n"
    )
    proc = deployed.python("-c", code, timeout=60).check()
    assert "STOPPED" in proc.stdout, proc.describe()

    # A call that was running when the app stopped fails; it does not hang.
    code = (
        "import ketch\n"
        "try:\n"
        f"    print('RESULT', ketch.FunctionCall.from_id({call_id!r}).get(timeout=40))\n"
        "except Exception as e:\n"
        "    print('FAILED', type(e).__name__, e)\n"
    )
    proc = deployed.python("-c", code, timeout=60).check()
    assert "FAILED" in proc.stdout and "TimeoutError" not in proc.stdout, proc.describe()


# --- scaling -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_min_containers_and_scale_to_zero(ketch_env):
    env = ketch_env
    env.cli("deploy", "examples/scaling.py", timeout=60).check()

    def containers():
        record = env.app_record("scaling-demo")
        return record["n_containers"] if record else None

    # min_containers=1 keeps one `warm` container up with no calls at all.
    assert env.wait_until(lambda: (containers() or 0) >= 1, 30), f"n_containers={containers()}"

    def pids(fn: str, calls: int) -> list[int]:
        code = (
            f"import ketch\nf = ketch.Function.from_name('scaling-demo', {fn!r})\n"
            f"print('PIDS', *(f.remote() for _ in range({calls})))\n"
        )
        proc = env.python("-c", code).check()
        return [int(pid) for pid in proc.stdout.split("PIDS", 1)[1].split()]

    [warm_pid] = pids("warm", 1)
    # Called twice in a row, `quick` finds its container still up (scaledown_window=2).
    first, second = pids("quick", 2)
    assert first == second != warm_pid, (first, second, warm_pid)

    # Idle for two seconds, the `quick` container goes away...
    assert env.wait_until(lambda: not env.pid_alive(first), 15), "idle container did not scale down"
    assert env.wait_until(lambda: containers() == 1, 10), f"n_containers={containers()}, expected 1"
    # ...while the min_containers=1 container, idle for longer, stays.
    assert env.pid_alive(warm_pid), "the min_containers=1 container was scaled down"

    env.cli("app", "stop", "scaling-demo").check()
    assert env.wait_until(lambda: not env.pid_alive(warm_pid), 15), (
        "container survived `ketch app stop`"
    )
    assert env.wait_until(lambda: containers() == 0, 10), f"n_containers={containers()} after stop"
