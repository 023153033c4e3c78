"""A throwaway Docker registry on loopback, and a tiny root filesystem to push to it.

``local_registry`` runs Debian's ``docker-registry`` on a free 127.0.0.1 port
with its storage under the test's temporary directory (never the system
service on :5000). ``make_rootfs`` writes a small but real-looking root
filesystem without any network: files, modes, symlinks and a hard link, but no
programs that run (no static busybox is installed on the test machines).

Example::

    with local_registry(tmp_path) as host:
        rootfs = make_rootfs(tmp_path / "rootfs")
        digest = asyncio.run(push_rootfs(rootfs, f"{host}/test/tiny:1"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ketch.images.registry import (
    LAYOUT_TAG,
    RETRY_TIMES,
    LogFn,
    Reference,
    RegistryError,
    _ignore,
    _remove_tree,
    _rootless,
    _run,
    _skopeo,
    _tool_failure,
    parse_reference,
)

REGISTRY_BINARY = "/usr/bin/docker-registry"
TOOLS = ("skopeo", "umoci")

# What make_rootfs writes, for tests to check after a round trip.
MARKER_PATH = "etc/ketch-marker.txt"
MARKER_TEXT = "written by tests/registry_util.py\n"
SECRET_PATH = "etc/secret"  # mode 0600
SCRIPT_PATH = "usr/bin/hello.sh"  # mode 0755
HARDLINK_PATH = "usr/bin/hello"  # a hard link to SCRIPT_PATH
SYMLINKS = {"bin": "usr/bin", "usr/bin/greet": "hello.sh"}  # path -> target
STICKY_DIR = "tmp"  # mode 1777
EMPTY_DIR = "srv/data"
DOOMED_PATH = "etc/doomed.conf"  # for tests that delete a file in a later layer


def registry_binary() -> str | None:
    """The docker-registry program, or None when it is not installed."""
    if os.access(REGISTRY_BINARY, os.X_OK):
        return REGISTRY_BINARY
    return shutil.which("docker-registry")


def missing_tools() -> list[str]:
    """The programs registry tests need that this machine lacks (empty when all are here).

    Example: ``pytest.mark.skipif(bool(missing_tools()), reason=...)``.
    """
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if registry_binary() is None:
        missing.append("docker-registry")
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _config(storage: Path, port: int) -> str:
    # json.dumps makes a double-quoted YAML scalar of any path.
    return (
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {json.dumps(str(storage))}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )


@contextlib.contextmanager
def local_registry(tmp_path: Path, *, timeout: float = 20.0) -> Iterator[str]:
    """Run a registry without auth on a free loopback port; yield ``"127.0.0.1:PORT"``.

    Waits until ``GET /v2/`` answers 200 (raising ``RuntimeError`` with the
    registry's stderr after ``timeout`` seconds), and kills the registry on exit.

    Example: ``with local_registry(tmp_path) as host: ref = f"{host}/test/tiny:1"``.
    """
    binary = registry_binary()
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    home = Path(tempfile.mkdtemp(prefix="registry-", dir=tmp_path))
    deadline = time.monotonic() + timeout
    for attempt in range(3):  # another process may take the free port before the registry does
        port = free_port()
        config = home / f"config-{port}.yml"
        config.write_text(_config(home / "storage", port))
        stderr_path = home / f"stderr-{port}.log"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
            )
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(f"http://127.0.0.1:{port}/v2/"):
                    break
                time.sleep(0.05)
            else:
                output = stderr_path.read_text(errors="replace")[-4000:]
                if proc.poll() is not None and "address already in use" in output and attempt < 2:
                    continue
                raise RuntimeError(
                    f"docker-registry on 127.0.0.1:{port} did not answer GET /v2/ within "
                    f"{timeout:g}s (exit status {proc.poll()}); its output:\n{output}"
                )
            yield f"127.0.0.1:{port}"
            return
        finally:
            proc.kill()
            proc.wait(timeout=10)


def make_rootfs(dir: Path) -> Path:
    """Write a tiny root filesystem into ``dir`` (created if needed) and return ``dir``.

    It holds ``MARKER_PATH`` with ``MARKER_TEXT``, ``etc/os-release``, a 0600
    ``SECRET_PATH``, an executable ``SCRIPT_PATH`` with a hard link
    ``HARDLINK_PATH``, the relative ``SYMLINKS``, a sticky ``STICKY_DIR``, an
    ``EMPTY_DIR`` and ``DOOMED_PATH``.

    Example: ``(make_rootfs(tmp_path / "rootfs") / MARKER_PATH).read_text() == MARKER_TEXT``.
    """
    dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dir, 0o755)
    files = {
        "etc/os-release": 'ID=ketch-test\nNAME="ketch test rootfs"\n',
        MARKER_PATH: MARKER_TEXT,
        SECRET_PATH: "not for everyone\n",
        SCRIPT_PATH: "#!/bin/sh\necho hello from the image\n",
        DOOMED_PATH: "deleted by a later layer in some tests\n",
    }
    for relative, text in files.items():
        path = dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o644)
    os.chmod(dir / SECRET_PATH, 0o600)
    os.chmod(dir / SCRIPT_PATH, 0o755)
    os.link(dir / SCRIPT_PATH, dir / HARDLINK_PATH)
    for relative, target in SYMLINKS.items():
        os.symlink(target, dir / relative)
    (dir / STICKY_DIR).mkdir()
    os.chmod(dir / STICKY_DIR, 0o1777)
    (dir / EMPTY_DIR).mkdir(parents=True)
    return dir


def push_without(source: str, target: str, relative: str, work: Path) -> None:
    """Push ``target``: image ``source`` plus a layer that deletes ``relative`` (a whiteout).

    Both references are on a loopback registry. ``work`` must be an empty or
    missing directory; it is left for the caller's ``tmp_path`` to clean.

    Example: ``push_without(f"{host}/test/tiny:1", f"{host}/test/tiny:2", DOOMED_PATH, tmp)``.
    """
    work.mkdir(parents=True, exist_ok=True)
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    steps = [
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{source}", "oci:layout:base"],
        ["umoci", "unpack", *rootless, "--image", "layout:base", "bundle"],
        None,  # the deletion
        ["umoci", "repack", "--image", "layout:base", "bundle"],
        ["skopeo", "copy", "--dest-tls-verify=false", "oci:layout:base", f"docker://{target}"],
    ]
    for argv in steps:
        if argv is None:
            (work / "bundle" / "rootfs" / relative).unlink()
            continue
        done = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")


class PushError(RegistryError):
    """Packing a root filesystem into an image or uploading it failed.

    Example: ``PushError("could not push to '127.0.0.1:5000/a:1': registry unreachable ...")``.
    """


async def push_rootfs(
    rootfs: Path,
    ref: str,
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    log: LogFn = _ignore,
    timeout: float = 900,
) -> str:
    """Pack the directory ``rootfs`` into a one-layer image and upload it as ``ref``.

    Ownership, modes, symlinks and hard links are kept. ``env``, ``workdir``,
    ``user``, ``entrypoint`` and ``cmd`` become the image configuration. Returns
    the digest of the manifest in the registry. Raises :class:`PushError` when a
    tool fails or the push takes longer than ``timeout`` seconds.

    Example: ``await push_rootfs(Path("rootfs"), "127.0.0.1:5000/a/b:1", workdir="/srv")``.
    """
    rootfs = Path(rootfs)
    reference = _push_target(rootfs, ref)
    work = Path(tempfile.mkdtemp(prefix="ketch-push-"))
    config_flags = _config_flags(ref, env, workdir, user, entrypoint, cmd)
    steps = _push_steps(rootfs, reference, work, config_flags)
    try:
        await _run_push_steps(steps, ref, reference, work, log, timeout)
        return (work / "digest").read_text().strip()
    finally:
        await asyncio.to_thread(_remove_tree, work)


def _push_target(rootfs: Path, ref: str) -> Reference:
    """The parsed ``ref``, after checking that it has a tag and ``rootfs`` is a directory."""
    try:
        reference = parse_reference(ref)
    except ValueError as exc:
        raise PushError(str(exc), ref=ref) from None
    if reference.digest:
        raise PushError(f"cannot push to {ref!r}: a push needs a tag, not a digest", ref=ref)
    if not rootfs.is_dir():
        raise PushError(f"cannot push {rootfs} as {ref!r}: it is not a directory", ref=ref)
    return reference


def _config_flags(
    ref: str,
    env: Mapping[str, str] | None,
    workdir: str | None,
    user: str | None,
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
) -> list[str]:
    """The ``umoci config`` flags that set the image configuration (none when nothing is set)."""
    flags: list[str] = []
    for key, value in (env or {}).items():
        if not key or "=" in key:
            raise PushError(f"cannot push {ref!r}: bad environment variable name {key!r}", ref=ref)
        flags.append(f"--config.env={key}={value}")
    if workdir is not None:
        flags.append(f"--config.workingdir={workdir}")
    if user is not None:
        flags.append(f"--config.user={user}")
    flags += [f"--config.entrypoint={arg}" for arg in entrypoint or ()]
    flags += [f"--config.cmd={arg}" for arg in cmd or ()]
    return flags


def _push_steps(
    rootfs: Path, reference: Reference, work: Path, config_flags: list[str]
) -> list[tuple[str, list[str]]]:
    """Each tool run of a push, named for errors: lay out, unpack, copy in, repack, upload."""
    image, history = f"layout:{LAYOUT_TAG}", "--history.created_by=ketch push_rootfs"
    steps: list[tuple[str, list[str]]] = [
        ("umoci init", ["umoci", "init", "--layout", "layout"]),
        ("umoci new", ["umoci", "new", "--image", image]),
        ("umoci unpack", ["umoci", "unpack", *_rootless(), "--image", image, "bundle"]),
        ("cp", ["cp", "-a", "--", f"{rootfs.resolve()}/.", "bundle/rootfs/"]),
        ("umoci repack", ["umoci", "repack", history, "--image", image, "bundle"]),
    ]
    if config_flags:
        steps.append(("umoci config", ["umoci", "config", *config_flags, "--image", image]))
    copy = [*_skopeo(work), "copy", f"--retry-times={RETRY_TIMES}", "--digestfile=digest"]
    if reference.insecure:
        copy.append("--dest-tls-verify=false")
    steps.append(("skopeo copy", [*copy, f"oci:{image}", reference.transport]))
    return steps


async def _run_push_steps(
    steps: list[tuple[str, list[str]]],
    ref: str,
    reference: Reference,
    work: Path,
    log: LogFn,
    timeout: float,
) -> None:
    """Run ``steps`` in ``work`` in order, all within ``timeout`` seconds; raise PushError if one fails."""
    step = "starting"
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            for step, argv in steps:
                result = await _run(argv, cwd=work, log=log)
                if result.returncode != 0:
                    raise _tool_failure(PushError, "push", ref, reference, step, result)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise PushError(
            f"pushing {ref!r} timed out after {timeout:g}s during {step} (the tool was stopped)",
            ref=ref,
        ) from None
