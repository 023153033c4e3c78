"""Tests for ``ketch.worker.cgroups`` against the real kernel (no mocks).

Tests that create groups need root and a usable cgroup hierarchy (v1, hybrid or
v2) and are skipped otherwise. Each test works under its own parent group
``ketch-test-<random>``, which the ``parent`` fixture removes with everything in
it, even when the test fails. The pure tests (``describe``, argument checks,
``join_command`` quoting) run everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.worker.cgroups import (
    CgroupError,
    ContainerCgroup,
    Support,
    cleanup_stale,
    detect,
    join_command,
)

pytestmark = pytest.mark.timeout(60)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SUPPORT = detect() if IS_ROOT else Support("none", frozenset(), "not root")

needs_cgroups = pytest.mark.skipif(
    not IS_ROOT or SUPPORT.version == "none",
    reason=f"needs root and usable cgroups ({SUPPORT.describe()})",
)


def needs(controller: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        controller not in SUPPORT.controllers,
        reason=f"the cgroup {controller} controller is not usable here ({SUPPORT.describe()})",
    )


MakeGroup = Callable[..., ContainerCgroup]


@pytest.fixture
def parent() -> Iterator[str]:
    name = f"ketch-test-{uuid.uuid4().hex[:10]}"
    yield name
    cleanup_stale(name, SUPPORT, remove_parent=True)
    left = [os.path.join(root, name) for _, root in SUPPORT.roots]
    assert not [p for p in left if os.path.exists(p)], f"parent groups left behind: {left}"


@pytest.fixture
def make_group(parent: str) -> Iterator[MakeGroup]:
    """Create groups under the test's parent; all are removed at teardown."""
    created: list[ContainerCgroup] = []

    def make(
        memory_limit_bytes: int | None = None,
        cpu_limit: float | None = None,
        pids_limit: int | None = None,
    ) -> ContainerCgroup:
        cg = ContainerCgroup.create(
            f"c-{uuid.uuid4().hex[:8]}",
            memory_limit_bytes=memory_limit_bytes,
            cpu_limit=cpu_limit,
            pids_limit=pids_limit,
            parent=parent,
            support=SUPPORT,
        )
        created.append(cg)
        return cg

    try:
        yield make
    finally:
        for cg in created:
            cg.remove()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# --------------------------------------------------------------------------- pure tests


def test_describe_is_one_line_and_says_what_is_not_enforced() -> None:
    none = Support(version="none", controllers=frozenset(), reason="not root")
    assert none.describe() == (
        "cgroups unavailable (not root): memory, cpu and pids limits are NOT enforced"
    )
    assert "not enforced" in none.describe().lower()

    full = Support(version="v1", controllers=frozenset({"memory", "cpu", "pids"}))
    assert full.describe() == "cgroup v1: memory, cpu, pids limits enforced"

    partial = Support(
        version="v2", controllers=frozenset({"memory", "pids"}), reason="no cpu controller"
    )
    line = partial.describe()
    assert line.startswith("cgroup v2: memory, pids limits enforced")
    assert "cpu limits are NOT enforced (no cpu controller)" in line

    assert SUPPORT.describe() and "\n" not in SUPPORT.describe()


def test_create_refuses_bad_arguments_and_unavailable_limits() -> None:
    none = Support(version="none", controllers=frozenset(), reason="not root")
    with pytest.raises(CgroupError, match=r"memory limit.*not root"):
        ContainerCgroup.create("c1", memory_limit_bytes=2**26, support=none)
    with pytest.raises(CgroupError, match="unavailable"):
        ContainerCgroup.create("c1", support=none)
    for bad in ("", "..", "a/b", "with space"):
        with pytest.raises(ValueError, match="invalid cgroup name"):
            ContainerCgroup.create(bad, support=none)
    with pytest.raises(ValueError, match="invalid cgroup parent"):
        ContainerCgroup.create("c1", parent="../etc", support=none)
    with pytest.raises(ValueError, match="cpu limit"):
        ContainerCgroup.create("c1", cpu_limit=0, support=none)
    with pytest.raises(ValueError, match="memory limit"):
        ContainerCgroup.create("c1", memory_limit_bytes=-1, support=none)


def test_join_command_passes_any_argv_through_untouched(tmp_path: Path) -> None:
    # A stand-in group made of plain directories: join_command only writes pids to files.
    dirs = [tmp_path / "memory", tmp_path / "cpu"]
    for d in dirs:
        d.mkdir()
    cg = ContainerCgroup(
        name="c1", version="v1", paths={"memory": str(dirs[0]), "cpu": str(dirs[1])}
    )
    nasty = ["$(touch pwned)", '"; exit 3; "', "`id`", "a b\nc", "", "--", "$1", "*"]
    argv = join_command(
        cg,
        [sys.executable, "-c", "import os, sys; print(os.getpid()); print(sys.argv[1:])", *nasty],
    )
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=30, check=True)
    pid_line, args_line = out.stdout.split("\n", 1)
    assert args_line.strip() == repr(nasty)
    for d in dirs:  # the process wrote its own pid (the one that later ran python) everywhere
        assert (d / "cgroup.procs").read_text().strip() == pid_line
    assert not (tmp_path / "pwned").exists()


def test_join_command_fails_with_125_when_the_group_cannot_be_joined(tmp_path: Path) -> None:
    cg = ContainerCgroup(name="c1", version="v1", paths={"memory": str(tmp_path / "missing")})
    out = subprocess.run(join_command(cg, ["true"]), capture_output=True, text=True, timeout=30)
    assert out.returncode == 125
    assert "cannot join cgroup" in out.stderr
    with pytest.raises(ValueError):
        join_command(cg, [])


# --------------------------------------------------------------------------- real cgroups


@needs_cgroups
def test_detect_finds_a_usable_hierarchy_and_leaves_nothing_behind() -> None:
    support = detect()
    assert support.version in ("v1", "v2")
    assert "memory" in support.controllers
    for _, root in support.roots:
        assert not [n for n in os.listdir(root) if n.startswith("ketch-probe-")]
    assert detect("/nonexistent/cgroup").version == "none"


@needs_cgroups
@needs("memory")
def test_memory_limit_oom_kills_and_is_reported(make_group: MakeGroup) -> None:
    hog = make_group(memory_limit_bytes=64 * 2**20)
    touch_400_mib = "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    proc = subprocess.Popen(join_command(hog, [sys.executable, "-c", touch_400_mib]))
    assert proc.wait(timeout=30) == -9
    assert hog.oom_killed()

    modest = make_group(memory_limit_bytes=64 * 2**20)
    touch_8_mib = "b = bytearray(8 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    proc = subprocess.Popen(join_command(modest, [sys.executable, "-c", touch_8_mib]))
    assert proc.wait(timeout=30) == 0
    assert not modest.oom_killed()
    peak = modest.memory_peak_bytes()
    if peak is not None:  # v2 kernels before 5.19 have no memory.peak
        assert 8 * 2**20 <= peak <= 64 * 2**20


@needs_cgroups
@needs("cpu")
def test_cpu_limit_caps_cpu_time(make_group: MakeGroup) -> None:
    cg = make_group(cpu_limit=0.2)
    if SUPPORT.version == "v2":
        assert Path(cg.paths["cpu"], "cpu.max").read_text().split() == ["20000", "100000"]
    else:
        assert Path(cg.paths["cpu"], "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert Path(cg.paths["cpu"], "cpu.cfs_period_us").read_text().strip() == "100000"

    spin = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.5:\n    pass"
    start = time.monotonic()
    proc = subprocess.Popen(join_command(cg, [sys.executable, "-c", spin]))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    cpu = usage.ru_utime + usage.ru_stime
    assert proc.returncode == 0
    assert wall >= 1.5
    # Unlimited it would burn ~1.5 s; at 0.2 cores about 0.3 s plus start-up.
    assert cpu < 0.75, f"used {cpu:.2f}s of CPU in {wall:.2f}s under a 0.2-core limit"


@needs_cgroups
@needs("pids")
def test_pids_limit_refuses_forks_and_remove_kills_everything(make_group: MakeGroup) -> None:
    cg = make_group(pids_limit=8)
    assert Path(cg.paths["pids"], "pids.max").read_text().strip() == "8"
    spawner = (
        "import subprocess, sys, time\n"
        "ok, errors, children = 0, set(), []\n"
        "for _ in range(30):\n"
        "    try:\n"
        "        children.append(subprocess.Popen(['sleep', '5']))\n"
        "        ok += 1\n"
        "    except OSError as e:\n"
        "        errors.add(type(e).__name__)\n"
        "print(ok, ' '.join(sorted(errors)), flush=True)\n"
        "time.sleep(30)\n"
    )
    # The with block closes the pipe; the finally makes sure its wait does not hang.
    with subprocess.Popen(
        join_command(cg, [sys.executable, "-c", spawner]), stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            ok_text, _, errors = proc.stdout.readline().strip().partition(" ")
            assert int(ok_text) <= 7  # the spawner itself is one of the 8
            assert errors == "BlockingIOError"
            members = cg.pids()
            assert proc.pid in members and 2 <= len(members) <= 8

            cg.remove()
            assert proc.wait(timeout=10) == -9
            _wait_for(lambda: not any(_alive(p) for p in members))
            assert not any(os.path.exists(d) for d in cg.directories())
            cg.remove()  # idempotent
        finally:
            if proc.poll() is None:
                proc.kill()


@needs_cgroups
def test_join_and_kill_all_catch_every_process(make_group: MakeGroup) -> None:
    cg = make_group()
    joined = subprocess.Popen(["sleep", "30"])
    spawned = subprocess.Popen(join_command(cg, ["/bin/sh", "-c", "sleep 30 & exec sleep 31"]))
    try:
        cg.join(joined.pid)
        _wait_for(lambda: len(cg.pids()) == 3)
        assert {joined.pid, spawned.pid} <= set(cg.pids())

        members = cg.pids()
        cg.kill_all()
        assert cg.pids() == []
        assert joined.wait(timeout=10) == -9
        assert spawned.wait(timeout=10) == -9
        _wait_for(lambda: not any(_alive(p) for p in members))
    finally:
        for p in (joined, spawned):
            if p.poll() is None:
                p.kill()
                p.wait()


@needs_cgroups
def test_cleanup_stale_removes_only_empty_groups(parent: str, make_group: MakeGroup) -> None:
    empty = make_group()
    busy = make_group()
    proc = subprocess.Popen(join_command(busy, ["sleep", "30"]))
    try:
        # In every hierarchy, not just one: the join writes them one after another (v1), and
        # a hierarchy not yet joined looks empty to cleanup_stale.
        _wait_for(
            lambda: all(str(proc.pid) in Path(f).read_text().split() for f in busy.procs_files())
        )
        assert cleanup_stale(parent, SUPPORT) == 1
        assert not any(os.path.exists(d) for d in empty.directories())
        assert all(os.path.exists(d) for d in busy.directories())

        busy.remove()
        assert proc.wait(timeout=10) == -9
        assert cleanup_stale(parent, SUPPORT, remove_parent=True) == 0
        assert not any(os.path.exists(os.path.join(root, parent)) for _, root in SUPPORT.roots)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
