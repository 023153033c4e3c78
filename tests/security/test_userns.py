"""Container root is nobody on the host: the sandbox runtime's user namespace.

One app run (one image build step, one container, two calls): the build step
and the container record who they are; the container writes in ``/root`` and
in a Volume, reads image files installed by apt and pip, and round-trips a
Dict over the control plane's socket. The local entrypoint, on the host, reads
the container's process from ``/proc`` between the calls and uploads a file to
the Volume, which the second call reloads, changes and commits. The test then
reads the layer the step wrote, on the host's disk.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path

import pytest

FIRST_BUILD_S = 300  # a fresh machine builds the Debian base first (debootstrap)
pytestmark = pytest.mark.timeout(FIRST_BUILD_S + 120)

APP = r'''
import errno
import json
import os
import socket
import subprocess
import tempfile

import ketch

TOKEN = "@TOKEN@"
STEP = f"id -u > /opt/{TOKEN}-uid && cat /proc/self/uid_map > /opt/{TOKEN}-map && rm /etc/issue.net"
# The same chain as the sandbox e2e tests (cached there), and a step of this run's own.
image = ketch.Image.debian_slim().apt_install("jq").pip_install("six==1.16.0").run_commands(STEP)
app = ketch.App("security-userns")
vol = ketch.Volume.from_name(f"userns-{TOKEN}", create_if_missing=True)


def owner(path):
    st = os.stat(path)
    return [st.st_uid, st.st_gid]


def refused(fn):
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "done"


def bind_low_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 80))


@app.function(image=image, volumes={"/vol": vol}, max_containers=1)
def inside(step: str) -> dict:
    if step == "reload":  # what the client uploaded meanwhile: the reload writes it, root here changes it
        vol.reload()
        with open("/vol/uploaded/up.txt", "a") as fh:
            fh.write(" + container")
        with open("/vol/uploaded/more.txt", "w") as fh:
            fh.write("more")
        vol.commit()
        return {"uploaded": owner("/vol/uploaded/up.txt"), "container": os.environ["KETCH_CONTAINER_ID"]}
    import six

    with open("/root/made-here", "w") as fh:
        fh.write("x")
    os.makedirs("/vol/dir", exist_ok=True)
    with open("/vol/dir/new.txt", "w") as fh:
        fh.write("from the container")
    vol.commit()
    shared = ketch.Dict.from_name(f"userns-{TOKEN}", create_if_missing=True)
    shared["k"] = "through api.sock"
    return {
        "uid_map": open("/proc/self/uid_map").read().split(),
        "ids": [os.getuid(), os.getgid()],
        "root_file": owner("/root/made-here"),
        "image_file": owner("/etc/passwd"),
        "vol_file": owner("/vol/dir/new.txt"),
        "jq": subprocess.run(["jq", "-n", "1+1"], capture_output=True, text=True).stdout.strip(),
        "six": [six.__version__, owner(six.__file__)],
        "build_uid": open(f"/opt/{TOKEN}-uid").read().strip(),
        "build_map": open(f"/opt/{TOKEN}-map").read().split(),
        "issue_net_gone": not os.path.exists("/etc/issue.net"),
        "dict": shared["k"],
        "mknod": refused(lambda: os.mknod(tempfile.mktemp(), 0o20666, os.makedev(1, 3))),
        "port_80": refused(bind_low_port),
        "container": os.environ["KETCH_CONTAINER_ID"],
    }


def host_uids(container_id):
    """The host's view of the container's ketch runtime process: its Uid line."""
    marker = f"KETCH_CONTAINER_ID={container_id}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{pid}/status") as fh:
                status = dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)
        except OSError:
            continue
        if marker in environ and b"ketch.guest" in cmdline:
            return status["Uid"].split()
    return None


@app.local_entrypoint()
def main():
    first = inside.remote("first")
    seen = {"first": first, "host_uids": host_uids(first["container"])}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "up.txt")
        with open(path, "w") as fh:
            fh.write("up")
        with vol.batch_upload(force=True) as batch:
            batch.put_file(path, "/uploaded/up.txt")
    seen["reload"] = inside.remote("reload")
    seen["committed"] = {
        name: b"".join(vol.read_file(name)).decode() for name in ("dir/new.txt", "uploaded/up.txt", "uploaded/more.txt")
    }
    print("USERNS " + json.dumps(seen), flush=True)
'''


def _own_layer(token: str) -> Path | None:
    from ketch.images.layers import LayerStore

    root = Path(os.environ.get("KETCH_IMAGE_CACHE", "~/.cache/ketch/images")).expanduser()
    store = LayerStore(root)
    for info in store.infos():
        if token in info.summary:
            return store.fs(info.hash)
    return None


def _remove_own_layers(token: str) -> None:
    from ketch.images.layers import LayerStore

    store = LayerStore(
        Path(os.environ.get("KETCH_IMAGE_CACHE", "~/.cache/ketch/images")).expanduser()
    )
    for info in store.infos():
        if token in info.summary and store.path(info.hash).exists():
            store.remove(info.hash)


@pytest.fixture(scope="module")
def userns_run(sandbox_env, tmp_path_factory) -> dict:
    if os.environ.get("KETCH_USERNS") == "0":
        pytest.skip("KETCH_USERNS=0: no user namespace asked for")
    token = f"un{uuid.uuid4().hex[:12]}"
    app = tmp_path_factory.mktemp("userns") / "userns_app.py"
    app.write_text(APP.replace("@TOKEN@", token))
    try:
        proc = sandbox_env.cli("run", app, timeout=FIRST_BUILD_S)
        found = re.search(r"^USERNS (\{.*\})$", proc.stdout, re.M)
        assert found, proc.describe()
        layer = _own_layer(token)
        assert layer is not None, "the run_commands layer is not in the cache"
        on_disk = {
            rel: (
                os.lstat(layer / rel).st_uid,
                os.lstat(layer / rel).st_gid,
                os.lstat(layer / rel).st_mode,
            )
            for rel in (f"opt/{token}-uid", "etc/issue.net")
        }
    finally:
        _remove_own_layers(token)
    status = sandbox_env.cli("server", "status").check().stdout
    return {**json.loads(found[1]), "layer": on_disk, "token": token, "status": status}


def _base() -> int:
    from ketch._config import config

    return int(config.get("userns_base"))


def test_root_inside_is_an_unprivileged_host_uid(userns_run):
    first = userns_run["first"]
    assert first["uid_map"] == ["0", str(_base()), "65536"], first
    assert first["ids"] == [0, 0]
    assert userns_run["host_uids"] == [str(_base())] * 4, userns_run  # real, effective, saved, fs
    isolation = next(
        line for line in userns_run["status"].splitlines() if line.startswith("isolation")
    )
    assert f"user namespace (root inside is host uid {_base()};" in isolation, isolation


def test_files_keep_their_owners(userns_run):
    first = userns_run["first"]
    assert first["root_file"] == first["image_file"] == first["vol_file"] == [0, 0], first
    assert first["jq"] == "2", first  # apt's files
    assert first["six"] == ["1.16.0", [0, 0]], first  # pip's files


def test_build_steps_run_as_root_of_the_namespace(userns_run):
    first = userns_run["first"]
    assert first["build_uid"] == "0" and first["build_map"] == first["uid_map"], first
    assert first["issue_net_gone"] is True
    layer = userns_run["layer"]
    uid, gid, mode = layer[f"opt/{userns_run['token']}-uid"]
    assert (uid, gid) == (0, 0) and stat.S_ISREG(mode), layer  # on disk as host root made it
    uid, gid, mode = layer["etc/issue.net"]  # the whiteout overlayfs made: host root's too
    assert (uid, gid) == (0, 0) and stat.S_ISCHR(mode), layer


def test_volumes_and_the_api_socket_work(userns_run):
    assert userns_run["first"]["dict"] == "through api.sock"
    reload = userns_run["reload"]
    assert reload["container"] == userns_run["first"]["container"], reload  # the reload wrote there
    assert reload["uploaded"] == [0, 0], reload
    assert userns_run["committed"] == {
        "dir/new.txt": "from the container",
        "uploaded/up.txt": "up + container",
        "uploaded/more.txt": "more",
    }


def test_what_root_of_the_namespace_cannot_do(userns_run):
    """docs/security.md: no device nodes, no ports below 1024 on the host's network."""
    first = userns_run["first"]
    assert first["mknod"] == "EPERM" and first["port_80"] == "EACCES", first


def test_staged_mounts_show_the_namespaces_ids_and_go_away(tmp_path):
    """The host side of the recipe, without a container: idmapped mounts, and nothing left after."""
    from ketch.worker import userns

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "src").mkdir()
    (home / "src" / "f").write_text("x")
    os.chown(home / "src" / "f", 1000, 1000)
    ns, why = userns.start(home)
    if ns is None:
        pytest.skip(f"no user namespace here: {why}")
    try:
        with ns.staging() as stage:
            seen = stage.expose(home / "src")
            assert stage.dir.parent == ns.dir
            top = ns.dir.stat()  # other host users see the mount points in mountinfo: no way in
            assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (0, ns.base, 0o710)
            assert os.stat(seen / "f").st_uid == ns.base + 1000  # on disk 1000: 1000 inside
            assert os.stat(seen).st_uid == ns.base and ns.owns(seen)
            with pytest.raises(OSError):
                (seen / "g").write_text("read-only")
        assert not userns.mounts_below(stage.dir)
    finally:
        ns.close()
    assert not userns.mounts_below(ns.dir) and not ns.dir.exists()
