"""Containers on a real three-node Ray cluster (issue 17), end to end from the CLI.

Ray's servers listen on every address whatever they are told, so the cluster,
the control plane and the clients run in a network namespace this module makes
(only its loopback exists there). Three ``ray start`` nodes with 1, 2 and 4
CPUs; the third also declares one A10G GPU (a fake one, ``KETCH_FAKE_GPUS``).
Proved here: placement by resources (a ``cpu=3`` function and an A10G function
land on the only node that has them), containers spread over the nodes,
sandboxes and web endpoints on nodes, image build steps on a node and a
sandbox's snapshot brought back from one, a gang spread over the three nodes,
``ketch node list``, Volumes on a node that gets copies of them (as one on
another machine does), a control plane ``kill -9``-ed and restarted, and a node killed
during a 2,000-input map with ``retries=0``: every result comes back right.
The API and the channel speak TLS (a self-signed certificate), so the nodes' relays
and every client do too. In the PostgreSQL pass the state is in PostgreSQL too (over its
unix socket).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from ketch_testing import KetchEnv, self_signed_cert, wait_until

pytestmark = pytest.mark.timeout(600)

RAY = Path(sys.executable).parent / "ray"
PORT = 6380  # inside the namespace every port is free

APP = textwrap.dedent(
    """
    import os, time, urllib.request
    import ketch

    app = ketch.App("ray-e2e")

    def node():
        return os.environ.get("KETCH_NODE_ID", "?")

    @app.function(cpu=1.0)
    def spread(i):
        time.sleep(1.0)
        return node()

    @app.function(cpu=3.0)
    def big():
        return node()

    @app.function(gpu="A10G")
    def gpu():
        return node(), os.environ.get("CUDA_VISIBLE_DEVICES")

    @app.function()
    @ketch.web_server(8000, startup_timeout=60)
    def files():  # no fastapi in the default image, and no PyPI in the test's namespace
        import pathlib, subprocess, sys
        pathlib.Path("/tmp/www").mkdir(exist_ok=True)
        pathlib.Path("/tmp/www/node").write_text(node())
        subprocess.Popen([sys.executable, "-m", "http.server", "8000", "-d", "/tmp/www"])

    @app.local_entrypoint()
    def main():
        print("BIG", big.remote())
        print("GPU", *gpu.remote())
        print("SPREAD", " ".join(sorted(set(spread.map(range(8))))))
        with urllib.request.urlopen(files.get_web_url() + "/node", timeout=60) as r:
            print("WEB", r.read().decode())
        sb = ketch.Sandbox.create("sh", "-c", "echo sandbox on $KETCH_NODE_ID", app=app)
        sb.wait()
        print("SANDBOX", sb.stdout.read().strip())
    """
)

MAP = textwrap.dedent(
    """
    import os, time
    import ketch

    app = ketch.App("ray-loss")

    @app.function(cpu=1.0, retries=0)
    def square(i):
        time.sleep(0.05)
        return i * i, os.environ.get("KETCH_NODE_ID", "?")

    @app.local_entrypoint()
    def main():
        out, seen = [], {}
        for n, (value, node) in enumerate(square.map(range(2000))):
            out.append(value)
            seen[node] = seen.get(node, 0) + 1
            if n % 100 == 0:
                print("PROGRESS", n, flush=True)
        assert out == [i * i for i in range(2000)], "wrong results"
        print("ALL OK", len(out), " ".join(f"{k}={v}" for k, v in sorted(seen.items())))
    """
)

VOLUMES = textwrap.dedent(
    """
    import io, os
    import ketch

    app = ketch.App("ray-volumes")
    vol = ketch.Volume.from_name("ray-e2e-vol", create_if_missing=True)

    # copy=False local files: sent to the node that does not share files, by content.
    assets = (
        ketch.image.default_image()
        .add_local_dir("assets", "/assets", ignore=["*.log"])
        .add_local_file("one.txt", "/one.txt")
    )

    @app.function(cpu=3.0, volumes={"/data": vol}, image=assets)  # only the node that gets copies fits
    def write():
        found = sorted(
            os.path.relpath(os.path.join(top, f), "/assets")
            for top, _, files in os.walk("/assets") for f in files
        )
        print("ASSETS", *found, open("/assets/sub/b.txt").read(), open("/one.txt").read())
        vol.reload()
        with open("/data/seed.txt") as f:  # filled from the working copy on the control plane
            seed = f.read()
        with open("/data/committed.txt", "w") as f:
            f.write("in-run " + seed)
        vol.commit()  # the node's copy comes back, then commits
        with open("/data/at-exit.txt", "w") as f:
            f.write("at exit")  # comes back when the container ends
        return os.environ.get("KETCH_NODE_ID", "?")

    @app.function(volumes={"/data": vol})
    def other():
        with open("/data/other.txt", "w") as f:
            f.write("from another container")
        vol.commit()

    @app.function(cpu=3.0, volumes={"/data": vol})  # a new container on the same node
    def again():
        os.makedirs("/data/sub/deeper", exist_ok=True)
        with open("/data/sub/deeper/new.txt", "w") as f:
            f.write("new")
        os.remove("/data/seed.txt")
        os.symlink("committed.txt", "/data/link")
        vol.commit()  # only these changes travel back
        other.remote()
        vol.reload()  # the node's copy takes the other container's file, keeps its own
        with open("/data/other.txt") as f:
            return f.read(), os.path.exists("/data/sub/deeper/new.txt")

    @app.local_entrypoint()
    def main():
        with vol.batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(b"seed"), "/seed.txt")
        print("NODE", write.remote())
        print("COMMITTED", b"".join(vol.read_file("committed.txt")).decode())
        print("AGAIN", *again.remote())
        print("LISTED", sorted(e.path for e in vol.listdir("/", recursive=True)))
    """
)

BUILD = textwrap.dedent(
    """
    import ketch

    app = ketch.App("ray-build")

    def stamp():  # a run_function step: needs the ketch bundle on the node
        with open("/stamp", "w") as f:
            f.write("stamped")

    image = (
        ketch.image.default_image()
        .run_commands("echo built TAG > /marker")
        .run_function(stamp)
    )

    @app.function(image=image)
    def read():
        return open("/marker").read().split()[1] + "," + open("/stamp").read()

    @app.local_entrypoint()
    def main():
        print("READ", read.remote())
        sb = ketch.Sandbox.create("sleep", "120", app=app, image=image)
        sb.exec("sh", "-c", "echo snapped > /snapped && rm /stamp").wait()
        snap = sb.snapshot_filesystem()
        sb.terminate()
        sb2 = ketch.Sandbox.create("sh", "-c", "cat /snapped /marker; ls /stamp", app=app, image=snap)
        sb2.wait()
        print("SNAP", " ".join(sb2.stdout.read().split()), "|", sb2.stderr.read().strip())
    """
)

WARM = textwrap.dedent(
    """
    import ketch

    app = ketch.App("ray-warm")

    @app.function()
    def f():
        return 1

    @app.local_entrypoint()
    def main():
        print("WARM", f.remote())
    """
)

GLOO = textwrap.dedent(
    """
    import os
    import ketch

    app = ketch.App("ray-gloo")
    # torch's CPU build from local wheels: the namespace has no way out.
    image = (
        ketch.image.default_image()
        .add_local_dir("wheels", "/wheels", copy=True)
        .pip_install("torch==VERSION", find_links="/wheels", extra_options="--no-index")
    )

    @app.function(image=image)
    @ketch.experimental.clustered(size=3)
    def reduce():
        import torch
        import torch.distributed as dist

        info = ketch.experimental.get_cluster_info()
        os.environ.update(
            MASTER_ADDR=info.container_ips[0], MASTER_PORT="29517", GLOO_SOCKET_IFNAME="lo"
        )
        dist.init_process_group("gloo", rank=info.rank, world_size=info.size)
        total = torch.tensor([float(info.rank + 1)])
        dist.all_reduce(total)  # every member ends with the sum
        dist.destroy_process_group()
        assert total.item() == 6.0, total
        return info.size, total.item()

    @app.local_entrypoint()
    def main():
        print("GLOO", *reduce.remote())
    """
)


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _unmount_under(path: Path) -> None:
    """What a killed node's worker left mounted under ``path`` (deepest first)."""
    with open("/proc/self/mountinfo") as fh:
        rows = [line.split() for line in fh]
    points = [r[4] for r in rows if r[4].startswith(str(path)) or r[3].startswith(str(path))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def _remove_cgroups(prefix: str) -> None:
    root = Path("/sys/fs/cgroup")
    for top in root.glob(prefix + "*"):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda d: -len(d[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


@pytest.fixture(scope="module")
def cluster(workdir_module):
    from ketch.cluster.agent import clear_leftovers
    from ketch.worker import isolate

    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter (a network namespace for Ray)")
    if not RAY.exists():
        pytest.skip("Ray is not installed (pip install 'ketch[ray]')")
    if not (support := isolate.support()).ok:
        pytest.skip(f"the sandbox runtime cannot run here: {support.reason}")
    base = Path(tempfile.mkdtemp(prefix="ketch-ray-", dir="/tmp"))
    # The image and the ketch bundle are built where PyPI and Debian are reachable: the
    # namespace has no way out (on a real cluster the control plane's machine has one).
    warm = KetchEnv(base / "warm-home", runtime="sandbox")
    try:
        (workdir_module / "warm.py").write_text(WARM)
        assert "WARM 1" in warm.cli("run", "warm.py", cwd=workdir_module, timeout=300).stdout
    finally:
        warm.close()
    holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    env = KetchEnv(base / "home", runtime="sandbox")
    try:
        wait_until(
            lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
            10,
        )
        env.wrap = ["nsenter", "-t", str(holder.pid), "-n"]
        subprocess.run([*env.wrap, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        env.env["KETCH_NODE_HOME"] = str(base / "nodes")
        env.env["KETCH_LOG_LEVEL"] = "INFO"
        if env.database and (sockets := os.environ.get("KETCH_TEST_POSTGRES_SOCKET")):
            port = os.environ["KETCH_TEST_POSTGRES"].rsplit(":", 1)[1]
            env.env["KETCH_DATABASE"] = (
                f"postgresql://postgres@/{env.database}?host={sockets}&port={port}"
            )
        common = ["--temp-dir", str(base / "ray"), "--disable-usage-stats"]
        head = ["--head", f"--port={PORT}", "--include-dashboard=false"]
        join = [f"--address=127.0.0.1:{PORT}"]
        for args, extra in (
            ([*head, "--num-cpus=1"], {}),
            ([*join, "--num-cpus=2"], {}),
            (
                [*join, "--num-cpus=4", "--num-gpus=1", '--resources={"accelerator_type:A10G": 1}'],
                # ... and works on copies of Volumes, as a node on another machine does.
                {"KETCH_FAKE_GPUS": "A10G", "KETCH_NODE_SHARES_FILES": "0"},
            ),
        ):
            done = env._run([str(RAY), "start", *args, *common], 120, extra_env=extra)
            assert done.returncode == 0, done.describe()
        # TLS on the API and the channel: the nodes' relays and every client speak it.
        cert, key = self_signed_cert(base)
        env.env["KETCH_TLS_CA"] = str(cert)
        env.tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
        started = env.cli("server", "start", "--ray", f"127.0.0.1:{PORT}", *env.tls, timeout=120)
        assert started.returncode == 0, started.describe()
        # Up once every node runs a worker (one whose worker failed to start is tried again).
        assert wait_until(lambda: len(_nodes(env)) == 3, 60), (env.home / "server.log").read_text()[
            -3000:
        ]
        yield env
    finally:
        env.close()
        holder.kill()
        holder.wait()
        for home in (base / "nodes").glob("ketch-node-*"):
            clear_leftovers(home)
        _unmount_under(base)
        _remove_cgroups("ketch-node-")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir_module(tmp_path_factory):
    return tmp_path_factory.mktemp("ray-app")


def _nodes(env: KetchEnv) -> list[dict]:
    done = env.cli("node", "list", "--json")
    assert done.returncode == 0, done.describe()
    return json.loads(done.stdout)


def test_nodes_are_listed_with_their_resources(cluster):
    nodes = _nodes(cluster)
    log = (cluster.home / "server.log").read_text()[-3000:]
    assert sorted(n["cpus"] for n in nodes) == [1, 2, 4], log
    gpu_nodes = [n for n in nodes if n["gpus"]]
    assert len(gpu_nodes) == 1 and gpu_nodes[0]["cpus"] == 4
    assert gpu_nodes[0]["gpus"][0]["type"] == "A10G"
    assert all(n["health"] == "ok" for n in nodes)
    status = cluster.cli("server", "status")
    assert "Ray cluster at 127.0.0.1" in status.stdout, status.describe()
    assert "https://127.0.0.1" in status.stdout  # the nodes reach it over TLS
    if cluster.database:  # the PostgreSQL pass: the state is there, reached over its socket
        assert "postgresql" in status.stdout.lower(), status.describe()


PROBE = textwrap.dedent(
    """
    import json, os, socket, ssl, sys
    from ketch._wire import encode

    info = json.load(open(os.path.join(os.environ["KETCH_HOME"], "server.json")))
    host, port = info["channel"].rsplit(":", 1)
    tls = ssl.create_default_context(cafile=os.environ["KETCH_TLS_CA"])

    def said(hello, wrap):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            sock = tls.wrap_socket(raw, server_hostname=host) if wrap else raw
            try:
                sock.sendall(encode(hello))
                return sock.recv(4096)
            except (OSError, ssl.SSLError) as exc:
                return type(exc).__name__

    guess = {"container_id": "ta-0123456789abcdef0123", "token": "kc-guessed"}
    print(json.dumps({
        "plain": repr(said(guess, False)),
        "guessed_token": repr(said(guess, True)),
        "guessed_tunnel": repr(said({"t": "tunnel", "id": "guessed"}, True)),
    }))
    """
)


def test_the_channel_port_gives_nothing_without_a_token(cluster):
    """With ``--ray`` the channel listens where the nodes reach it (TLS here): a client with
    no container token, in clear or over TLS, gets no init and no tunnel, only a closed
    connection."""
    done = cluster.python("-c", PROBE).check()
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["guessed_token"] == "b''" and said["guessed_tunnel"] == "b''", said
    assert "init" not in said["plain"] and "spec" not in said["plain"], said


def test_containers_are_placed_by_resources_and_spread(cluster, workdir_module):
    by_cpus = {n["cpus"]: n["node_id"] for n in _nodes(cluster)}
    (workdir_module / "app.py").write_text(APP)
    done = cluster.cli("run", "app.py", cwd=workdir_module, timeout=300)
    assert done.returncode == 0, done.describe()
    lines = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1]
        for line in done.stdout.splitlines()
        if " " in line
    }
    assert lines["BIG"] == by_cpus[4]  # only that node has 3 CPUs free
    assert lines["GPU"] == f"{by_cpus[4]} 0"  # the A10G, as device 0 of the container
    assert len(lines["SPREAD"].split()) >= 2, done.stdout  # 8 containers of 1 CPU: 7 CPUs in all
    assert lines["WEB"] in by_cpus.values()  # the gateway reached a container on a node
    assert lines["SANDBOX"].removeprefix("sandbox on ") in by_cpus.values()


def test_images_build_on_a_node_and_snapshots_come_back(cluster, workdir_module):
    """Build steps that run programs (``run_commands``, ``run_function``) run on a node;
    the layers come back to the control plane's cache, from where any node gets them.
    ``snapshot_filesystem()`` of a sandbox on a node becomes an image too."""
    tag = os.urandom(4).hex()  # a new layer each run: never cached
    (workdir_module / "build.py").write_text(BUILD.replace("TAG", tag))
    done = cluster.cli("run", "build.py", cwd=workdir_module, timeout=300)
    assert done.returncode == 0, done.describe() + (cluster.home / "server.log").read_text()[-3000:]
    assert f"READ {tag},stamped" in done.stdout, done.describe()
    assert f"SNAP snapped built {tag} | ls: cannot access '/stamp'" in done.stdout, done.describe()
    built_on = re.findall(r"building on node (\w+)", done.stdout + done.stderr)
    assert len(built_on) == 2, done.describe()  # the two steps; the copy of files is here
    homes = list(Path(cluster.env["KETCH_NODE_HOME"]).glob(f"ketch-node-{built_on[0]}*"))
    metas = [json.loads(m.read_text()) for m in homes[0].glob("images/layers/*/meta.json")]
    assert any(tag in m["summary"] for m in metas), metas


def test_a_gang_spreads_over_the_nodes(cluster):
    """``examples/gang_all_reduce.py``: one placement group, a bundle on each node."""
    run = cluster.run_example("gang_all_reduce.py", timeout=240)
    result = run.value("reduce")
    assert result["sum"] == 60 and result["size"] == 3
    assert sorted(result["nodes"]) == sorted(n["node_id"] for n in _nodes(cluster))


def _torch_wheel() -> Path | None:
    """A CPU build of torch among this machine's local wheels (pip's find-links), if any."""
    for folder in os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split():
        found = sorted(Path(folder).glob("torch-*+cpu-cp311-*.whl"))
        if found:
            return found[-1]
    return None


def test_a_gang_runs_a_gloo_all_reduce_across_nodes(cluster, workdir_module):
    """``torch.distributed`` with gloo: three members on three nodes rendezvous through
    ``get_cluster_info()`` and all-reduce a tensor."""
    wheel = _torch_wheel()
    if wheel is None or cluster.database:
        pytest.skip("no local CPU build of torch (or the PostgreSQL pass: once is enough)")
    wheels = workdir_module / "wheels"
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    version = wheel.name.split("-")[1].split("+")[0]
    (workdir_module / "gloo.py").write_text(GLOO.replace("VERSION", version))
    done = cluster.cli("run", "gloo.py", cwd=workdir_module, timeout=500)
    assert done.returncode == 0, done.describe() + (cluster.home / "server.log").read_text()[-3000:]
    assert "GLOO 3 6.0" in done.stdout, done.describe()


def test_volumes_reach_a_node_that_does_not_share_files(cluster, workdir_module):
    """The 4-CPU node gets copies of working copies: filled at start, brought back by
    ``commit()`` and at exit, then committed on the control plane; and copies of the
    image's ``copy=False`` local files."""
    big = next(n["node_id"] for n in _nodes(cluster) if n["cpus"] == 4)
    (workdir_module / "volumes.py").write_text(VOLUMES)
    (workdir_module / "assets" / "sub").mkdir(parents=True)
    (workdir_module / "assets" / "a.txt").write_text("a")
    (workdir_module / "assets" / "noise.log").write_text("ignored")
    (workdir_module / "assets" / "sub" / "b.txt").write_text("bee")
    (workdir_module / "one.txt").write_text("one")
    done = cluster.cli("run", "volumes.py", cwd=workdir_module, timeout=240)
    assert done.returncode == 0, done.describe() + (cluster.home / "server.log").read_text()[-4000:]
    assert f"NODE {big}" in done.stdout and "COMMITTED in-run seed" in done.stdout, done.describe()
    assert "AGAIN from another container True" in done.stdout, done.describe()
    # The image's copy=False files reached that node, ignore rules applied.
    assert "ASSETS a.txt sub/b.txt bee one" in done.stdout, done.describe()
    listed = next(line for line in done.stdout.splitlines() if line.startswith("LISTED"))
    assert "'sub/deeper/new.txt'" in listed and "'link'" in listed, listed
    assert "'seed.txt'" not in listed, listed
    log = (cluster.home / "server.log").read_text()
    sent = [int(n) for n in re.findall(r"sent (\d+) of \d+ blobs", log)]
    # The run makes 5 files (seed, committed, at-exit, other, new): each blob goes to the node
    # once, however many times the copies there are filled, reloaded or committed.
    assert sent and sum(sent) <= 5, sent

    def at_exit() -> bool:
        listed = cluster.cli("volume", "ls", "ray-e2e-vol")
        return "at-exit.txt" in listed.stdout

    assert wait_until(at_exit, 60), cluster.cli("volume", "ls", "ray-e2e-vol").describe()


def test_a_control_plane_killed_mid_work_restarts_on_the_cluster(cluster):
    """``kill -9`` of the control plane while calls run on the nodes: its node workers die
    with its Ray driver, a restarted one starts new ones (which clean up after the old)
    and every spawned call still gets its result, from the store (SQLite or PostgreSQL)."""
    cluster.cli("deploy", "examples/deployed_app.py", timeout=240).check()
    inputs = [str(i) for i in range(1, 7)]
    spawned = cluster.python("examples/deployed_client.py", "spawn", *inputs).check()
    ids = dict(re.findall(r"CALL (\d+) (\S+)", spawned.stdout))
    assert set(ids) == set(inputs), spawned.describe()
    pid = cluster.server_pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not cluster.pid_alive(pid), 10)
    cluster.cli("server", "start", "--ray", f"127.0.0.1:{PORT}", *cluster.tls, timeout=120).check()
    got = cluster.python("examples/deployed_client.py", "get", *ids.values(), timeout=200).check()
    for x, call_id in ids.items():
        assert f"RESULT {call_id} {int(x) ** 2}" in got.stdout, got.describe()
    assert wait_until(lambda: len(_nodes(cluster)) == 3, 60)


def test_a_node_killed_during_a_map_loses_nothing(cluster, workdir_module):
    victim = next(n["node_id"] for n in _nodes(cluster) if n["cpus"] == 2)
    (workdir_module / "loss.py").write_text(MAP)
    run = cluster.popen("run", workdir_module / "loss.py")
    assert run.wait_for_line("PROGRESS 500", 240), run.text()
    raylet = subprocess.run(
        ["pgrep", "-f", f"raylet.*--node_id={victim}"], capture_output=True, text=True
    ).stdout.split()
    assert raylet, "no raylet for the victim node"
    for pid in _tree(int(raylet[0])):  # the node and everything on it, as when a machine dies
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = run.wait(300)
    assert done.returncode == 0 and "ALL OK 2000" in done.stdout, done.describe()
    assert wait_until(lambda: len(_nodes(cluster)) == 2, 60)
    log = (cluster.home / "server.log").read_text()
    assert f"node {victim[:12]} lost" in log and "preempted" in log
