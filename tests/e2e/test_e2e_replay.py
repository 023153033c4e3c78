"""Past calls: ``ketch call list/show`` and ``ketch call replay``, remote and local, with
the code version that ran them."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e

APP = """
import ketch

app = ketch.App("replay-demo")


@app.function()
def divide(a: int, b: int) -> float:
    print(f"dividing {a} by {b}")
    return a / b{fixed}


@app.function()
def add(a: int, b: int) -> int:
    return a + b
"""

CALLS = """
import ketch

divide = ketch.Function.from_name("replay-demo", "divide")
add = ketch.Function.from_name("replay-demo", "add")
failing = divide.spawn(1, 0)
try:
    failing.get()
except ZeroDivisionError:
    pass
ok = add.spawn(2, 3)
ok.get()
print("IDS", failing.object_id, ok.object_id)
"""


def test_calls_are_listed_shown_and_replayed_with_the_code_that_ran_them(ketch_env, tmp_path):
    app = tmp_path / "replay_app.py"
    app.write_text(APP.replace("{fixed}", ""))
    ketch_env.cli("deploy", app, cwd=tmp_path).check()
    made = ketch_env.python("-c", CALLS, cwd=tmp_path, timeout=120)
    assert made.returncode == 0, made.describe()
    failing, ok = re.search(r"IDS (fc-\S+) (fc-\S+)", made.stdout).groups()

    listed = ketch_env.cli("call", "list", "replay-demo").check().stdout
    assert failing in listed and ok in listed, listed
    only_failed = ketch_env.cli("call", "list", "replay-demo", "--failed").check().stdout
    assert failing in only_failed and ok not in only_failed, only_failed

    shown = ketch_env.cli("call", "show", failing).check().stdout
    for text in ("arguments: (1, 0)", "ZeroDivisionError", "dividing 1 by 0", "replay it:"):
        assert text in shown, shown

    # A new version that no longer fails: replaying the old call runs the old code.
    app.write_text(APP.replace("{fixed}", " if b else 0.0"))
    ketch_env.cli("deploy", app, cwd=tmp_path).check()
    remote = ketch_env.cli("call", "replay", failing, timeout=120)
    assert remote.returncode == 0, remote.describe()
    assert "input 0: same: raised ZeroDivisionError('division by zero')" in remote.stdout, (
        remote.describe()
    )
    local = ketch_env.cli("call", "replay", ok, "--local", timeout=60)
    assert local.returncode == 0 and "input 0: same: returned 5" in local.stdout, local.describe()
    debugged = ketch_env.cli("call", "replay", failing, "--local", "--pdb", timeout=60)
    assert "(Pdb)" in debugged.stdout and "same: raised ZeroDivisionError" in debugged.stdout, (
        debugged.describe()
    )
    ketch_env.cli("app", "stop", "replay-demo").check()


EPHEMERAL = """
import ketch

app = ketch.App("replay-ephemeral")


@app.cls()
class Model:
    k: int = ketch.parameter(default=2)

    @ketch.method()
    def mul(self, x: int) -> int:
        return x * self.k


@app.local_entrypoint()
def main():
    call = Model(k=5).mul.spawn(7)
    print("R", call.get(), call.object_id)
"""


def test_a_call_of_an_ephemeral_apps_class_replays_remotely(ketch_env, tmp_path):
    """An ephemeral app's call (its code named by local path, its class parameters and
    method) replays in a new app made from the archived spec."""
    (tmp_path / "eph.py").write_text(EPHEMERAL)
    run = ketch_env.cli("run", "eph.py", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.describe()
    call_id = re.search(r"R 35 (fc-\S+)", run.stdout).group(1)
    again = ketch_env.cli("call", "replay", call_id, timeout=120)
    assert again.returncode == 0 and "input 0: same: returned 35" in again.stdout, again.describe()
