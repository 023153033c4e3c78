"""Volumes end to end: between containers, commit/reload, exit and crash commits, client API, CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from ketch_testing import SHOW, ExampleRun, KetchEnv

pytestmark = pytest.mark.e2e

# Containers of the local runtime mount Volumes at real host paths (root: a private
# mount namespace over a mount point made here), so the tests use their own folder.
APP = SHOW + textwrap.dedent(
    """
    import errno, json, os, sys, time
    import ketch

    app = ketch.App("vol-e2e")
    vol = ketch.Volume.from_name("e2e-vol", create_if_missing=True)
    MOUNT = os.environ.get("E2E_MOUNT", "/data")

    @app.function(volumes={MOUNT: vol})
    def write(name: str, text: str, commit: bool = True, hold: float = 0.0) -> str:
        os.makedirs(os.path.dirname(f"{MOUNT}/{name}"), exist_ok=True)
        with open(f"{MOUNT}/{name}", "w") as fh:
            fh.write(text)
        if commit:
            vol.commit()
        time.sleep(hold)
        return os.environ["KETCH_CONTAINER_ID"]

    @app.function(volumes={MOUNT: vol})
    def read(name: str) -> dict:
        vol.reload()
        path = f"{MOUNT}/{name}"
        return {"text": open(path).read() if os.path.exists(path) else None,
                "container": os.environ["KETCH_CONTAINER_ID"]}

    @app.function(volumes={MOUNT: vol})
    def reload_with_open_file(name: str) -> str:
        fh = open(f"{MOUNT}/{name}")
        try:
            vol.reload()
            return "reloaded"
        finally:
            fh.close()

    @app.function(volumes={MOUNT: vol.read_only()})
    def peek(name: str) -> dict:
        out = {"text": open(f"{MOUNT}/{name}").read(), "nlink": os.stat(f"{MOUNT}/{name}").st_nlink}
        for what, attempt in [
            ("write", lambda: open(f"{MOUNT}/ro/new.txt", "w").write("x")),
            ("overwrite", lambda: open(f"{MOUNT}/{name}", "w").write("x")),
            ("commit", vol.commit),
        ]:
            try:
                attempt()
                out[what] = "done"
            except OSError as exc:
                out[what] = errno.errorcode.get(exc.errno or 0, str(exc))
            except Exception as exc:
                out[what] = type(exc).__name__ + ": " + str(exc)
        vol.reload()
        out["reloaded"] = open(f"{MOUNT}/{name}").read()
        return out

    @app.function(volumes={MOUNT: vol})
    def edit() -> dict:
        out = {"nlink": os.stat(f"{MOUNT}/ov/keep.txt").st_nlink}
        with open(f"{MOUNT}/ov/keep.txt", "a") as fh:  # in place, into a file twin.txt shares a blob with
            fh.write(" + edited")
        os.unlink(f"{MOUNT}/ov/gone.txt")
        with open(f"{MOUNT}/ov/new.txt", "w") as fh:
            fh.write("new")
        os.rename(f"{MOUNT}/ov/sub", f"{MOUNT}/ov/moved")  # a directory of the committed files
        vol.commit()
        return out

    @app.function()
    def commit_unmounted() -> str:
        vol.commit()
        return "committed"

    @app.local_entrypoint()
    def main(mode: str = "basic"):
        if mode == "basic":
            a = write.remote("dir/a.txt", "from a")
            show("read", lambda: read.remote("dir/a.txt"))
            show("writer", lambda: a)
            # Concurrent commits to different files both survive; to one file, the last one wins.
            calls = [write.spawn(f"c/{i}.txt", str(i)) for i in range(3)]
            [c.get() for c in calls]
            write.remote("same.txt", "first")
            write.remote("same.txt", "second")
            show("listing", lambda: sorted(e.path for e in vol.listdir("/", recursive=True)))
            show("same", lambda: read.remote("same.txt")["text"])
            show("open_file", lambda: reload_with_open_file.remote("same.txt"))
            show("unmounted", lambda: commit_unmounted.remote())
            show("client_commit", lambda: vol.commit())
        elif mode == "readonly":
            write.remote("ro/a.txt", "seen read-only")
            show("peek", lambda: peek.remote("ro/a.txt"))
            show("after", lambda: sorted(e.path for e in vol.listdir("/ro", recursive=True)))
        elif mode == "overlay":
            import io
            with vol.batch_upload(force=True) as batch:
                for name, text in [("keep", "original"), ("twin", "original"), ("gone", "bye"), ("sub/s", "s")]:
                    batch.put_file(io.BytesIO(text.encode()), f"/ov/{name}.txt")
            show("edit", lambda: edit.remote())
            show("files", lambda: {e.path: b"".join(vol.read_file(e.path)).decode()
                                   for e in vol.listdir("/ov", recursive=True) if e.type == ketch.FileEntryType.FILE})
        elif mode == "nocommit":
            show("wrote", lambda: write.remote("exit.txt", "committed at exit", False))
        elif mode == "hold":
            write.spawn("crash.txt", "committed after a crash", False, 300)
            time.sleep(600)
        elif mode == "check":
            show("exit", lambda: read.remote("exit.txt")["text"])
            show("crash", lambda: read.remote("crash.txt")["text"])
    """
)


@pytest.fixture
def vol_app(fresh_ketch_env, tmp_path):
    mount = Path(tempfile.mkdtemp(prefix="ketch-e2e-mnt-", dir="/tmp")) / "data"
    script = tmp_path / "vol_app.py"
    script.write_text(APP)
    fresh_ketch_env.env["E2E_MOUNT"] = str(
        mount
    )  # the CLI's, so its control plane's and containers'
    yield script
    shutil.rmtree(mount.parent, ignore_errors=True)


@pytest.mark.timeout(240)
def test_commit_reload_between_containers(local_home, tmp_path):
    run = _run_mode(local_home, tmp_path, "basic")
    read = run.value("read")
    assert read["text"] == "from a", run.proc.describe()
    assert read["container"] != run.value("writer"), "the reader should be another container"
    listing = run.value("listing")
    for path in ("dir", "dir/a.txt", "c/0.txt", "c/1.txt", "c/2.txt", "same.txt"):
        assert path in listing, listing
    assert run.value("same") == "second"
    assert "InvalidError" in run.error("open_file") and "open" in run.error("open_file")
    assert "does not mount that Volume" in run.error("unmounted")
    assert "InvalidError" in run.error("client_commit") and "inside a container" in run.error(
        "client_commit"
    )


@pytest.mark.timeout(300)
def test_exit_commit_and_crash_recovery(fresh_ketch_env, vol_app):
    env = fresh_ketch_env
    # Written without commit(): committed when the app stops and its container exits.
    run = ExampleRun.parse(env.cli("run", str(vol_app), "--mode", "nocommit", timeout=120))
    run.value("wrote")
    # Written without commit() by a container that is still running when the control plane
    # is killed: the working copy is committed when the control plane starts again.
    holder = env.popen("run", str(vol_app), "--mode", "hold")
    try:
        assert env.wait_until(
            lambda: any(Path(env.home, "volumes", "work").glob("*/*/data/crash.txt")), 90
        ), holder.text()
        time.sleep(0.5)
        crashed = {p.name for p in Path(env.home, "volumes", "work").iterdir()}
        pid = env.server_pid()
        os.kill(pid, signal.SIGKILL)
        assert env.wait_until(lambda: not env.pid_alive(pid), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.proc.pid, signal.SIGKILL)
    env.cli("server", "start", timeout=60).check()
    check = ExampleRun.parse(env.cli("run", str(vol_app), "--mode", "check", timeout=120))
    assert check.value("exit") == "committed at exit", check.proc.describe()
    assert check.value("crash") == "committed after a crash", check.proc.describe()
    # (The spawned input is retried after the crash, so a new container holds a copy of its own.)
    left = {p.name for p in Path(env.home, "volumes", "work").iterdir()}
    assert not crashed & left, (
        f"the crashed container's working copy is still there: {crashed & left}"
    )


CLIENT = SHOW + textwrap.dedent(
    """
    import io, json, os, sys
    import ketch
    from ketch import FileEntryType

    src = sys.argv[1]
    with ketch.Volume.ephemeral() as vol:
        with vol.batch_upload() as batch:
            batch.put_directory(src, "/tree")
            batch.put_file(io.BytesIO(b"in memory"), "/mem.txt")
        show("listdir", lambda: sorted((e.path, e.type.name, e.size) for e in vol.listdir("/")))
        show("recursive", lambda: sorted(e.path for e in vol.iterdir("/tree", recursive=True)))
        show("read", lambda: b"".join(vol.read_file("tree/sub/b.bin")).hex()[:16])
        show("big", lambda: sum(len(c) for c in vol.read_file("tree/big.bin")))
        buf = io.BytesIO()
        show("into", lambda: [vol.read_file_into_fileobj("mem.txt", buf), buf.getvalue().decode()])
        def again():
            with vol.batch_upload() as b:
                b.put_file(io.BytesIO(b"x"), "/mem.txt")
        show("no_force", again)
        vol.copy_files(["tree/a.txt", "mem.txt"], "copies")
        vol.copy_files(["tree"], "tree2", recursive=True)
        show("copied", lambda: sorted(e.path for e in vol.listdir("copies")) + [len(vol.listdir("tree2", recursive=True))])
        show("copy_dir_plain", lambda: vol.copy_files(["tree"], "tree3"))
        vol.remove_file("tree", recursive=True)
        vol.remove_file("mem.txt")
        show("after_remove", lambda: sorted(e.path for e in vol.listdir("/")))
        show("missing", lambda: b"".join(vol.read_file("nope.txt")))
        show("dotdot", lambda: vol.listdir("../etc"))
        show("rm_dir", lambda: vol.remove_file("tree2"))
    show("missing_volume", lambda: ketch.Volume.from_name("never-made").listdir("/"))
    """
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("transport", ["local", "http"])
def test_client_api(ketch_env, tmp_path, transport):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (src / "big.bin").write_bytes(os.urandom(9 << 20))  # more than one hash block
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    extra = {"KETCH_VOLUME_HTTP": "1"} if transport == "http" else {}
    run = ExampleRun.parse(ketch_env.python(script, str(src), timeout=150, extra_env=extra))
    assert run.value("listdir") == [["mem.txt", "FILE", 9], ["tree", "DIRECTORY", 0]], (
        run.proc.describe()
    )
    assert run.value("recursive") == ["tree/a.txt", "tree/big.bin", "tree/sub", "tree/sub/b.bin"]
    assert run.value("read") == "0001020304050607"
    assert run.value("big") == 9 << 20
    assert run.value("into") == [9, "in memory"]
    assert run.error("no_force").startswith("FileExistsError")
    assert run.value("copied") == ["copies/a.txt", "copies/mem.txt", 4]
    assert "recursive=True" in run.error("copy_dir_plain")
    assert run.value("after_remove") == ["copies", "tree2"]
    assert "NotFoundError" in run.error("missing")
    assert "InvalidError" in run.error("dotdot")
    assert "recursive=True" in run.error("rm_dir")
    assert "NotFoundError" in run.error("missing_volume") and "never-made" in run.error(
        "missing_volume"
    )


@pytest.mark.timeout(180)
def test_cli_group(ketch_env, tmp_path):
    cli = ketch_env.cli
    cli("volume", "create", "cli-vol").check()
    again = cli("volume", "create", "cli-vol")
    assert again.returncode == 1 and "AlreadyExistsError" in again.stderr, again.describe()
    assert "cli-vol" in cli("volume", "list").check().stdout
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("x")
    put = cli("volume", "put", "cli-vol", str(big)).check()
    assert "12.0 MiB in" in put.stderr, (
        put.describe()
    )  # the transfer summary under the progress bar
    cli("volume", "put", "cli-vol", str(tree), "/t").check()
    clash = cli("volume", "put", "cli-vol", str(big))
    assert (
        clash.returncode == 1 and "--force" in clash.stderr and "Traceback" not in clash.stderr
    ), clash.describe()
    cli("volume", "put", "cli-vol", str(big), "--force").check()
    listing = cli("volume", "ls", "cli-vol", "-r").check().stdout
    assert "12.0 MiB" in listing and "t/sub/x.txt" in listing, listing
    out = tmp_path / "out"
    out.mkdir()
    cli("volume", "get", "cli-vol", "big.bin", str(out)).check()
    assert (out / "big.bin").read_bytes() == big.read_bytes()
    cli("volume", "get", "cli-vol", "t", str(out)).check()
    assert (out / "t" / "sub" / "x.txt").read_text() == "x"
    assert cli("volume", "get", "cli-vol", "t/sub/x.txt", "-").check().stdout == "x"
    refuse = cli("volume", "get", "cli-vol", "big.bin", str(out))
    assert refuse.returncode == 1 and "--force" in refuse.stderr, refuse.describe()
    cli("volume", "cp", "cli-vol", "big.bin", "copy.bin").check()
    cli("volume", "cp", "-r", "cli-vol", "t", "t2").check()
    not_r = cli("volume", "rm", "cli-vol", "t")
    assert not_r.returncode == 1 and "-r" in not_r.stderr, not_r.describe()
    cli("volume", "rm", "-r", "cli-vol", "t").check()
    cli("volume", "rm", "cli-vol", "big.bin").check()
    paths = cli("volume", "ls", "cli-vol", "-r").check().stdout
    assert "copy.bin" in paths and "t2/sub/x.txt" in paths and " big.bin" not in paths, paths
    missing = cli("volume", "ls", "no-such-vol")
    assert missing.returncode == 1 and "NotFoundError" in missing.stderr, missing.describe()
    cli("volume", "delete", "cli-vol", "--yes").check()
    assert "cli-vol" not in cli("volume", "list").check().stdout


@contextlib.contextmanager
def _own_home(runtime: str):
    """A control plane of its own (skipped where ``runtime`` cannot run); nothing left mounted after."""
    from ketch.worker import isolate

    if runtime == "sandbox" and not isolate.support().ok:
        pytest.skip("the sandbox runtime cannot run here")
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-own-", dir="/tmp"))
    env = KetchEnv(home, runtime=runtime)
    env.env["E2E_MOUNT"] = str(home / "mnt" / "data") if runtime == "local" else "/data"
    try:
        yield env
    finally:
        env.close()
        shutil.rmtree(home, ignore_errors=True)
    assert str(home) not in Path("/proc/mounts").read_text(), "a working copy stayed mounted"


@pytest.fixture(scope="module")
def local_home():
    """One local-runtime control plane for the tests below that neither stop nor kill it."""
    with _own_home("local") as env:
        yield env


@pytest.fixture(scope="module")
def sandbox_home():
    """The same in the sandbox runtime (each mode writes under a folder of its own)."""
    with _own_home("sandbox") as env:
        yield env


def _home(request: pytest.FixtureRequest, runtime: str) -> KetchEnv:
    return request.getfixturevalue(f"{runtime}_home")


def _run_mode(env: KetchEnv, tmp_path: Path, mode: str) -> ExampleRun:
    script = tmp_path / "vol_app.py"
    script.write_text(APP)
    return ExampleRun.parse(env.cli("run", str(script), "--mode", mode, timeout=280))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runtime", ["local", "sandbox"])
def test_read_only_mount(request, tmp_path, runtime):
    """``vol.read_only()``: the mount refuses writes (EROFS), commit() is refused, reload() works."""
    if runtime == "local" and os.geteuid() != 0:
        pytest.skip("the local runtime mounts read-only only as root")
    run = _run_mode(_home(request, runtime), tmp_path, "readonly")
    peek = run.value("peek")
    assert peek["text"] == "seen read-only" == peek["reloaded"], run.proc.describe()
    assert peek["write"] == "EROFS" and peek["overwrite"] == "EROFS", peek
    assert peek["nlink"] >= 2, peek  # a hard link to the stored blob, not a copy
    assert peek["commit"].startswith("InvalidError") and "read-only" in peek["commit"], peek
    assert run.value("after") == ["ro/a.txt"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runtime", ["local", "sandbox"])
def test_read_write_mount_links_and_copies_up(request, tmp_path, runtime):
    """A read-write mount starts from hard links (as root: an overlay); writing a file copies it up,
    so a file sharing its blob keeps its bytes; deletes and new files commit."""
    from ketch.worker import isolate

    run = _run_mode(_home(request, runtime), tmp_path, "overlay")
    files = run.value("files")
    assert files == {
        "ov/keep.txt": "original + edited",
        "ov/twin.txt": "original",
        "ov/new.txt": "new",
        "ov/moved/s.txt": "s",
    }, run.proc.describe()
    if isolate.support().ok:  # root with overlayfs: the working copy is an overlay over links
        assert run.value("edit")["nlink"] >= 2, run.value("edit")  # linked, not copied, at first


@pytest.mark.timeout(300)
def test_example_in_sandbox(sandbox_home):
    env = sandbox_home
    run = ExampleRun.parse(env.cli("run", "examples/volumes.py", timeout=280))
    value = run.value("volumes")
    assert value["steps"] == 4 and value["score"] == 3.0 and value["two_containers"], value
    assert value["listing"] == ["checkpoints", "checkpoints/latest.json", "config.json"], value
    assert value["client_steps"] == 4
    listing = env.cli("volume", "ls", "example-volume", "-r").check().stdout
    assert "checkpoints/latest.json" in listing, listing
