"""``ketch container list|logs|stop`` through the real CLI (issue 16, "a way in": the first part).

A deployed app keeps one container (``min_containers=1``); the tests list it,
read its output, stop it (a new one takes its place), read the stopped one's
output, and try ids that do not exist.
"""

from __future__ import annotations

import re
import textwrap

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = textwrap.dedent(
    """
    import ketch

    app = ketch.App("containers-demo")


    @app.function(min_containers=1)
    def hello(n: int) -> int:
        print(f"hello number {n} from a container")
        return n
    """
)
CALL = (
    "import ketch, sys\n"
    "f = ketch.Function.from_name('containers-demo', 'hello')\n"
    "print('RESULT', f.remote(int(sys.argv[1])))\n"
)
ID = re.compile(r"^([a-z]+-\w+)\s+containers-demo\s+hello\s+(\w+)", re.M)


def _listed(env, *args) -> dict[str, str]:
    return dict(ID.findall(env.cli("container", "list", *args).check().stdout))


def test_list_logs_and_stop_a_container(fresh_ketch_env, workdir):
    env = fresh_ketch_env
    (workdir / "containers_app.py").write_text(APP)
    env.cli("deploy", workdir / "containers_app.py").check()
    assert env.wait_until(lambda: "running" in _listed(env).values(), 60), env.cli(
        "container", "list"
    ).stdout
    (first,) = _listed(env)
    assert set(_listed(env, "--app", "containers-demo")) == {first}
    app_id = env.app_record("containers-demo")["app_id"]
    assert set(_listed(env, "--app", app_id)) == {first}
    missing_app = env.cli("container", "list", "--app", "no-such-app")
    assert missing_app.returncode != 0 and "no-such-app" in missing_app.output

    assert "RESULT 7" in env.python("-c", CALL, "7").check().stdout
    seen = lambda: "hello number 7" in env.cli("container", "logs", first).stdout  # noqa: E731
    assert env.wait_until(seen, 30), env.cli("container", "logs", first).describe()

    assert f"stopping container {first}" in env.cli("container", "stop", first).check().stdout
    # min_containers=1: another container takes its place; the stopped one is gone.
    replaced = lambda: (ids := _listed(env)) and first not in ids  # noqa: E731
    assert env.wait_until(replaced, 60), env.cli("container", "list").stdout
    after = env.cli("container", "logs", first).check()  # an exited container keeps its logs
    assert "hello number 7" in after.stdout
    again = env.cli("container", "stop", first)
    assert again.returncode != 0 and "already exited" in again.output, again.describe()
    assert "RESULT 8" in env.python("-c", CALL, "8").check().stdout  # the new one serves calls


def test_unknown_container_ids_are_clear_errors(ketch_env):
    for command in (("logs", "ct-nope"), ("stop", "ct-nope")):
        done = ketch_env.cli("container", *command)
        assert done.returncode != 0, done.describe()
        assert "no container 'ct-nope'" in done.output, done.describe()
        assert "Traceback" not in done.output
