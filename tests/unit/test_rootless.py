"""worker/rootless.py: how an ordinary account's control plane maps itself, and says why not.

The full path (subordinate ids, images, containers) is tests/e2e/test_e2e_rootless.py;
here the parsing, the plan, and the single-id mapping of an account without a range.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.worker import rootless

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import accounts  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def test_subordinate_range_by_name_or_uid(tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text(
        "alice:100000:65536\nbroken line\nbob:x:1\n1234:200000:1000\ncarol:300000:0\n"
    )
    assert rootless.subordinate_range(subuid, "alice", 1000) == (100000, 65536)
    assert rootless.subordinate_range(subuid, "dave", 1234) == (200000, 1000)
    assert rootless.subordinate_range(subuid, "bob", 1) is None  # not numbers
    assert rootless.subordinate_range(subuid, "carol", 2) is None  # no ids in it
    assert rootless.subordinate_range(tmp_path / "missing", "alice", 1000) is None


def _plan_with(monkeypatch, tmp_path, subuid: str, tools: set[str]):
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text(subuid)
    monkeypatch.setattr(rootless, "SUBID_FILES", (tmp_path / "subuid", tmp_path / "subgid"))
    monkeypatch.setattr(rootless.shutil, "which", lambda t: f"/usr/bin/{t}" if t in tools else None)
    monkeypatch.setattr(rootless.os, "getuid", lambda: 4242)
    monkeypatch.setattr(rootless.os, "getgid", lambda: 4242)
    return rootless._plan()


def test_plan_takes_the_range_when_the_tools_and_the_range_are_there(monkeypatch, tmp_path):
    mapping, why_not, notes = _plan_with(
        monkeypatch, tmp_path, "4242:500000:65536\n", {"bwrap", "newuidmap", "newgidmap"}
    )
    assert why_not == "" and notes == []
    assert mapping.sub_uids == mapping.sub_gids == (500000, 65536) and not mapping.single_id
    assert "ids 1-65536 are its subordinate ids 500000-565535" in mapping.describe()


def test_plan_falls_back_to_one_id_and_says_what_to_ask_for(monkeypatch, tmp_path):
    mapping, _, notes = _plan_with(monkeypatch, tmp_path, "", {"bwrap", "newuidmap", "newgidmap"})
    assert mapping.single_id and "the only id mapped" in mapping.describe()
    assert any("no subordinate ids" in n for n in notes)
    assert any("usermod --add-subuids" in n for n in notes)
    mapping, _, notes = _plan_with(monkeypatch, tmp_path, "4242:500000:65536\n", {"bwrap"})
    assert mapping.single_id and any("package uidmap" in n for n in notes)


def test_without_bubblewrap_there_is_no_sandbox_and_the_admin_command_is_given(
    monkeypatch, tmp_path
):
    mapping, why_not, _ = _plan_with(monkeypatch, tmp_path, "", set())
    assert mapping is None
    assert "bubblewrap is not installed" in why_not and "apt-get install" in why_not


PROBE = """
import json, os
from pathlib import Path
from ketch.worker import rootless, isolate
from ketch.images.builder import Builder, _StepFailed
from ketch.images.layers import LayerStore

state = rootless.enter()
out = {"uid": os.getuid(), "describe": state.mapping.describe(), "notes": list(state.notes),
       "uid_map": open("/proc/self/uid_map").read().split(),
       "sandbox": isolate.support().ok, "options": isolate.overlay_options([Path("/l")], None, None)}
try:
    Builder(LayerStore(Path(os.environ["HOME"]) / "cache"))._bootstrap_argv("bookworm", Path("/x"))
except _StepFailed as exc:
    out["debian_slim"] = str(exc)
print("PROBE " + json.dumps(out))
"""


@pytest.mark.skipif(bool(accounts.missing()), reason=accounts.missing() or "ok")
def test_an_account_without_subordinate_ids_gets_a_single_id_mapping():
    account = accounts.Account.create()
    try:
        subprocess.run(
            [
                "usermod",
                "--del-subuids",
                "1-4294967294",
                "--del-subgids",
                "1-4294967294",
                account.name,
            ],
            check=True,
            capture_output=True,
        )
        done = subprocess.run(
            account.command([sys.executable, "-c", PROBE]),
            env=account.env(),
            cwd=account.home,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.split("PROBE ", 1)[1])
    finally:
        account.remove()
    assert out["uid"] == 0 and out["uid_map"] == ["0", str(account.uid), "1"]
    assert out["sandbox"] and out["options"].endswith(",userxattr")
    assert any("no subordinate ids" in note for note in out["notes"])
    assert "debian_slim cannot be built here" in out["debian_slim"]
    assert (
        f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {account.name}"
        in (out["debian_slim"])
    )


LANDLOCK = """
import os, socket
from ketch.guest.landlock import scope_container
why_not = scope_container()
out = [why_not]
for name in ("host", "inner"):
    if name == "inner":
        own = socket.socket(socket.AF_UNIX)
        own.bind("\\0ketch-landlock-inner-%d" % os.getpid())
        own.listen(1)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(("\\0ketch-landlock-%s-%d" % (name, os.getpid() if name == "inner" else os.getppid())))
        out.append("connected")
    except OSError as exc:
        out.append(type(exc).__name__)
try:
    os.kill(os.getppid(), 0)
    out.append("signalled")
except OSError as exc:
    out.append(type(exc).__name__)
print("|".join(out))
"""


def test_landlock_scope_keeps_a_container_off_host_abstract_sockets_and_signals():
    host = socket.socket(socket.AF_UNIX)
    host.bind(f"\0ketch-landlock-host-{os.getpid()}")
    host.listen(1)
    try:
        done = subprocess.run(
            [sys.executable, "-c", LANDLOCK], capture_output=True, text=True, timeout=30
        )
    finally:
        host.close()
    why_not, to_host, to_own, signal = done.stdout.strip().split("|")
    if why_not:
        pytest.skip(why_not)
    assert (to_host, to_own, signal) == ("PermissionError", "connected", "PermissionError")


@pytest.mark.skipif(bool(accounts.missing()), reason=accounts.missing() or "ok")
def test_without_bubblewrap_an_account_falls_back_to_local_and_status_says_why(tmp_path):
    account = accounts.Account.create()
    probe = (
        "from ketch.worker import isolate, rootless\n"
        "from ketch.worker.local import LocalWorker\n"
        "state = rootless.enter()\n"
        "worker = LocalWorker(None, None, use_template=False)\n"
        "worker.why_not_sandbox = isolate.support().reason\n"
        "print('PROBE', state.mapping, worker.isolation)\n"
    )
    try:
        env = account.env()
        env["PATH"] = str(Path(sys.executable).parent)  # no /usr/bin: no bwrap
        done = subprocess.run(
            account.command([sys.executable, "-c", probe]),
            env=env,
            cwd=account.home,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        account.remove()
    assert done.returncode == 0, done.stderr
    line = done.stdout.split("PROBE ", 1)[1]
    assert line.startswith("None none (local runtime"), line
    assert "the sandbox runtime cannot run here: bubblewrap is not installed" in line
    assert "sudo apt-get install -y bubblewrap uidmap mmdebstrap" in line
