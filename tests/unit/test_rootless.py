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
from ketch.images.builder import Builder, StepFailed
from ketch.images.layers import LayerStore

state = rootless.enter()
out = {"uid": os.getuid(), "describe": state.mapping.describe(), "notes": list(state.notes),
       "uid_map": open("/proc/self/uid_map").read().split(),
       "sandbox": isolate.support().ok, "options": isolate.overlay_options([Path("/l")], None, None),
       "overlay": isolate.probe_overlay(Path(os.environ["HOME"]) / "c", Path(os.environ["HOME"]) / "h")}
try:
    Builder(LayerStore(Path(os.environ["HOME"]) / "cache"))._bootstrap_argv("bookworm", Path("/x"))
except StepFailed as exc:
    out["debian_slim"] = str(exc)
print("PROBE " + json.dumps(out))
"""


@pytest.mark.skipif(bool(accounts.missing()), reason=accounts.missing() or "ok")
def test_an_account_without_subordinate_ids_gets_a_single_id_mapping():
    account = accounts.Account.create(subids=False)
    try:
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
    assert out["overlay"] == ""  # overlayfs mounts and takes a write in the account's namespace
    assert any("no subordinate ids" in note for note in out["notes"])
    assert "debian_slim cannot be built here" in out["debian_slim"]
    assert (
        f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {account.name}"
        in (out["debian_slim"])
    )


LANDLOCK = """
import json, os, socket, sys
from ketch.guest.landlock import confine_container
box, outside_fd = sys.argv[1], int(sys.argv[2])
why_not = confine_container(box)
out = {"why_not": why_not}


def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = type(exc).__name__


attempt("inside", lambda: open(os.path.join(box, "inside.txt")).read())
attempt("write_inside", lambda: open(os.path.join(box, "new.txt"), "w").close())
attempt("outside_path", lambda: open(os.path.join(os.path.dirname(box), "secret.txt")).read())
attempt("outside_fd", lambda: os.close(os.open("secret.txt", os.O_RDONLY, dir_fd=outside_fd)))
attempt("host_abstract", lambda: socket.socket(socket.AF_UNIX).connect("\\0ketch-landlock-%d" % os.getppid()))
own = socket.socket(socket.AF_UNIX)
own.bind("\\0ketch-landlock-own-%d" % os.getpid())
own.listen(1)
attempt("own_abstract", lambda: socket.socket(socket.AF_UNIX).connect("\\0ketch-landlock-own-%d" % os.getpid()))
attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
print("PROBE " + json.dumps(out))
"""


def test_landlock_keeps_a_container_to_its_files_sockets_and_signals(tmp_path):
    """What the guest applies: a descriptor or path outside the container's root is refused
    (as after a way out of its mounts), and so are the host's abstract sockets and processes."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "inside.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    host = socket.socket(socket.AF_UNIX)
    host.bind(f"\0ketch-landlock-{os.getpid()}")
    host.listen(1)
    outside = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        done = subprocess.run(
            [sys.executable, "-c", LANDLOCK, str(box), str(outside)],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(outside,),
        )
    finally:
        host.close()
        os.close(outside)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.split("PROBE ", 1)[1])
    if out.pop("why_not"):
        pytest.skip("this kernel has no Landlock scopes")
    assert out == {
        "inside": "ok",
        "write_inside": "ok",
        "outside_path": "PermissionError",
        "outside_fd": "PermissionError",
        "host_abstract": "PermissionError",
        "own_abstract": "ok",
        "signal_parent": "PermissionError",
    }


def test_a_missing_package_is_named_with_whom_to_ask(monkeypatch):
    monkeypatch.setattr(rootless.os, "geteuid", lambda: 0)
    assert rootless.install_hint("skopeo") == "apt-get install skopeo"
    monkeypatch.setattr(rootless.os, "geteuid", lambda: 1000)
    assert rootless.install_hint("skopeo") == (
        "ask an administrator: sudo apt-get install -y skopeo"
    )


def test_a_host_that_restricts_user_namespaces_is_named(monkeypatch, tmp_path):
    real = Path.read_text

    def fake(path, *args, **kwargs):
        if str(path) == "/proc/sys/kernel/apparmor_restrict_unprivileged_userns":
            return "1\n"
        if str(path) == "/proc/sys/kernel/unprivileged_userns_clone":
            raise FileNotFoundError(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", fake)
    assert rootless.userns_restrictions() == (
        "this host sets kernel.apparmor_restrict_unprivileged_userns=1, "
        "which an administrator can change"
    )
