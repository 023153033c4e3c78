"""ketch.images.registry against a real registry: push a tiny rootfs, pull it back, break things.

The registry is Debian's ``docker-registry`` on a free loopback port (see
``tests/registry_util.py``); nothing here needs the internet. The reference
parsing tests at the bottom need no tools at all.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.images.registry import (
    ImageConfig,
    PullError,
    is_insecure_host,
    normalize,
    parse_reference,
    pull,
)
from registry_util import (
    DOOMED_PATH,
    EMPTY_DIR,
    HARDLINK_PATH,
    MARKER_PATH,
    MARKER_TEXT,
    SCRIPT_PATH,
    SECRET_PATH,
    STICKY_DIR,
    SYMLINKS,
    PushError,
    free_port,
    local_registry,
    make_rootfs,
    missing_tools,
    push_rootfs,
    push_without,
)

MISSING = missing_tools()
needs_tools = pytest.mark.skipif(
    bool(MISSING),
    reason=f"registry tests need {', '.join(MISSING)} (scripts/system-deps installs them)",
)
OWNER = (1000, 1000)  # given to the marker file when the tests run as root


@dataclass(frozen=True)
class Pushed:
    host: str
    ref: str
    digest: str
    push_log: list[str]
    work: Path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if MISSING:
        pytest.skip(f"missing {', '.join(MISSING)}")
    with local_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


@pytest.fixture(scope="module")
def tiny(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """``test/tiny:1`` pushed once for the whole module."""
    work = tmp_path_factory.mktemp("tiny")
    rootfs = make_rootfs(work / "rootfs")
    if os.geteuid() == 0:
        os.chown(rootfs / MARKER_PATH, *OWNER)
    ref = f"{registry}/test/tiny:1"
    lines: list[str] = []
    digest = asyncio.run(
        push_rootfs(
            rootfs,
            ref,
            env={"GREETING": "hi", "LIST": "a,b=c"},
            workdir="/srv",
            entrypoint=["/bin/sh", "-c"],
            cmd=["echo $GREETING"],
            log=lines.append,
        )
    )
    return Pushed(registry, ref, digest, lines, work)


def _pull(ref: str, dest: Path, **kw) -> ImageConfig:
    return asyncio.run(pull(ref, dest, **kw))


def _leftovers(parent: Path, keep: Path | None = None) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != keep)


@needs_tools
@pytest.mark.timeout(120)
def test_pull_round_trips_files_env_and_workdir(tiny: Pushed, tmp_path: Path) -> None:
    dest = tmp_path / "images" / "tiny"  # the parent does not exist yet
    lines: list[str] = []
    config = _pull(tiny.ref, dest, log=lines.append)

    assert (dest / MARKER_PATH).read_text() == MARKER_TEXT
    for link, target in SYMLINKS.items():
        assert os.readlink(dest / link) == target
    assert (dest / "bin" / "hello.sh").read_text().startswith("#!/bin/sh")
    assert stat.S_IMODE((dest / SCRIPT_PATH).stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / SECRET_PATH).stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / STICKY_DIR).stat().st_mode) == 0o1777
    assert (dest / HARDLINK_PATH).stat().st_ino == (dest / SCRIPT_PATH).stat().st_ino
    assert (dest / EMPTY_DIR).is_dir() and not any((dest / EMPTY_DIR).iterdir())
    if os.geteuid() == 0:
        marker = (dest / MARKER_PATH).stat()
        assert (marker.st_uid, marker.st_gid) == OWNER

    assert config.env["GREETING"] == "hi"
    assert config.env["LIST"] == "a,b=c"
    assert config.workdir == "/srv"
    assert config.user is None
    assert config.entrypoint == ["/bin/sh", "-c"]
    assert config.cmd == ["echo $GREETING"]
    assert config.digest.startswith("sha256:") and len(config.digest) == 71
    assert config.digest == tiny.digest  # what the push reported is what the registry serves

    assert any("Copying blob" in line for line in lines), lines
    assert _leftovers(dest.parent, keep=dest) == []  # the temporary layout and bundle are gone


@needs_tools
@pytest.mark.timeout(120)
def test_pull_by_digest_gets_the_same_image(tiny: Pushed, tmp_path: Path) -> None:
    repository = tiny.ref.rsplit(":", 1)[0]
    config = _pull(f"{repository}@{tiny.digest}", tmp_path / "rootfs")
    assert config.digest == tiny.digest
    assert (tmp_path / "rootfs" / MARKER_PATH).read_text() == MARKER_TEXT


@needs_tools
@pytest.mark.timeout(120)
def test_a_whiteout_in_a_later_layer_deletes_the_file(tiny: Pushed, tmp_path: Path) -> None:
    derived = f"{tiny.host}/test/tiny:2"
    push_without(tiny.ref, derived, DOOMED_PATH, tmp_path / "work")
    assert (tiny.work / "rootfs" / DOOMED_PATH).exists()

    dest = tmp_path / "rootfs"
    config = _pull(derived, dest)
    assert not (dest / DOOMED_PATH).exists()
    assert (dest / MARKER_PATH).read_text() == MARKER_TEXT
    assert not [p.name for p in (dest / "etc").iterdir() if p.name.startswith(".wh.")]
    assert config.env["GREETING"] == "hi" and config.digest != tiny.digest


@needs_tools
@pytest.mark.timeout(120)
def test_unknown_tag_raises_pull_error_naming_the_reference(tiny: Pushed, tmp_path: Path) -> None:
    ref = f"{tiny.host}/test/tiny:no-such-tag"
    dest = tmp_path / "rootfs"
    with pytest.raises(PullError) as info:
        _pull(ref, dest)
    message = str(info.value)
    assert ref in message and "not found" in message, message
    assert "manifest unknown" in info.value.stderr_tail
    assert not dest.exists() and _leftovers(tmp_path) == []


@needs_tools
@pytest.mark.timeout(120)
def test_unknown_repository_raises_pull_error(tiny: Pushed, tmp_path: Path) -> None:
    ref = f"{tiny.host}/test/nothing-here:1"
    with pytest.raises(PullError, match="nothing-here"):
        _pull(ref, tmp_path / "rootfs")
    assert _leftovers(tmp_path) == []


@needs_tools
@pytest.mark.timeout(120)
def test_closed_port_fails_quickly(tmp_path: Path) -> None:
    ref = f"127.0.0.1:{free_port()}/test/tiny:1"
    with pytest.raises(PullError) as info:
        _pull(ref, tmp_path / "rootfs")
    # Told it is unreachable, rather than retried until the test's timeout.
    assert ref in str(info.value) and "unreachable" in str(info.value), str(info.value)
    assert _leftovers(tmp_path) == []


def _skopeo_pids_with(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"skopeo" in cmdline and text.encode() in cmdline:
                pids.append(int(entry))
    return pids


@needs_tools
@pytest.mark.timeout(120)
def test_timeout_kills_the_tool_and_cleans_up(tmp_path: Path) -> None:
    # A socket that accepts connections but never answers: skopeo waits forever.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        ref = f"127.0.0.1:{port}/test/tiny:1"
        with pytest.raises(PullError, match="timed out after 2s"):
            _pull(ref, tmp_path / "rootfs", timeout=2)
        assert _skopeo_pids_with(f"127.0.0.1:{port}/") == []
    assert _leftovers(tmp_path) == []


@needs_tools
@pytest.mark.timeout(120)
def test_existing_destination_is_refused(tiny: Pushed, tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        _pull(tiny.ref, tmp_path / "rootfs")


@needs_tools
@pytest.mark.timeout(120)
def test_push_errors(tmp_path: Path) -> None:
    with pytest.raises(PushError, match="not a directory"):
        asyncio.run(push_rootfs(tmp_path / "missing", "127.0.0.1:1/a:1"))
    with pytest.raises(PushError, match="digest"):
        asyncio.run(push_rootfs(tmp_path, "127.0.0.1:1/a@sha256:" + "0" * 64))
    with pytest.raises(PushError, match="unreachable"):
        asyncio.run(push_rootfs(make_rootfs(tmp_path / "r"), f"127.0.0.1:{free_port()}/a:1"))


# ---------------------------------------------------------------------------
# reference parsing (no tools needed)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("python:3.12-slim", "docker://docker.io/library/python:3.12-slim"),
        ("python", "docker://docker.io/library/python:latest"),
        (
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "docker://docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04",
        ),
        ("127.0.0.1:5000/a/b", "docker://127.0.0.1:5000/a/b:latest"),
        ("localhost/a:1", "docker://localhost/a:1"),
        ("index.docker.io/library/debian:12", "docker://docker.io/library/debian:12"),
        ("docker://ghcr.io/x/y:v1", "docker://ghcr.io/x/y:v1"),
        ("ghcr.io/x/y@sha256:" + "a" * 64, "docker://ghcr.io/x/y@sha256:" + "a" * 64),
        ("ghcr.io/x/y:v1@sha256:" + "b" * 64, "docker://ghcr.io/x/y@sha256:" + "b" * 64),
        ("[::1]:5000/a/b:2", "docker://[::1]:5000/a/b:2"),
    ],
)
def test_normalize(ref: str, expected: str) -> None:
    assert normalize(ref) == expected


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "ref",
    ["", "Python:3", "python:", "python:-x", "a//b", "ghcr.io/x/y@sha256:abc", "ex ample/a"],
)
def test_invalid_references_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference"):
        normalize(ref)


@pytest.mark.timeout(120)
def test_invalid_reference_is_a_pull_error(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="Python"):
        asyncio.run(pull("Python:3", tmp_path / "rootfs"))
    assert not (tmp_path / "rootfs").exists()


@pytest.mark.timeout(120)
def test_parse_reference_parts() -> None:
    ref = parse_reference("127.0.0.1:5000/team/tool:1")
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (
        "127.0.0.1:5000",
        "team/tool",
        "1",
        None,
    )
    assert ref.hostname == "127.0.0.1" and ref.name == "127.0.0.1:5000/team/tool"


@pytest.mark.timeout(120)
def test_is_insecure_host() -> None:
    for ref in (
        "localhost/a",
        "localhost:5000/a",
        "127.0.0.1:5000/a/b",
        "[::1]:5000/a",
        "127.0.0.2/a",
    ):
        assert is_insecure_host(ref), ref
    for ref in ("python:3", "ghcr.io/x/y", "10.0.0.1:5000/a", "localhost.example.com/a"):
        assert not is_insecure_host(ref), ref
