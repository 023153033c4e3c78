"""Pull container images from registries into root filesystems.

A pull is two tools in a row: ``skopeo copy`` fetches the image from the
registry into an OCI layout, and ``umoci unpack`` applies its layers (whiteouts
included) to a fresh root filesystem, which is then renamed into place. The
image configuration (env, workdir, user, entrypoint, cmd) is read from the
config blob in the layout, exactly as the image author wrote it. (Pushing, which only
the tests need, is ``tests/registry_util.push_rootfs``.)

Loopback registries (``localhost``, ``127.0.0.1``, ``[::1]``, any port) are
spoken to over plain HTTP; every other host needs HTTPS with a valid
certificate.

Example::

    config = await pull("python:3.12-slim", Path("/var/cache/ketch/py312"), log=print)
    config.env["PYTHON_VERSION"], config.workdir, config.digest
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..worker import rootless

LogFn = Callable[[str], None]

DOCKER_HUB = "docker.io"
LAYOUT_TAG = "ketch"  # the tag of the image inside our temporary OCI layouts
RETRY_TIMES = 2  # skopeo's own retries for transient registry errors
TAIL_LINES = 15  # how much of a tool's stderr an error message carries

_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_HOST_RE = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]+)?"
)
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_POLICY_FILES = (Path("~/.config/containers/policy.json"), Path("/etc/containers/policy.json"))
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def _ignore(line: str) -> None:
    """The default ``log``: drop the line."""


class RegistryError(Exception):
    """A pull failed; ``ref`` is the image reference, ``stderr_tail`` the tool's last words.

    Example: ``except RegistryError as exc: print(exc.ref, exc.stderr_tail)``.
    """

    def __init__(self, message: str, *, ref: str = "", stderr_tail: str = "") -> None:
        super().__init__(message)
        self.ref = ref
        self.stderr_tail = stderr_tail


class PullError(RegistryError):
    """Pulling an image failed: unknown image or tag, unreachable registry, timeout, bad image.

    Example: ``PullError("could not pull 'python:9': tag '9' not found ...")``.
    """


@dataclass(frozen=True)
class ImageConfig:
    """What a pulled image asks of the process that runs in it.

    ``digest`` is the digest of the manifest the reference resolved to in the
    registry (for a multi-platform image, of its index): pulling
    ``name@<digest>`` gets the same image again.

    Example: ``ImageConfig(env={"PATH": "/usr/bin"}, workdir="/app", user=None,
    entrypoint=[], cmd=["python3"], digest="sha256:...")``.
    """

    env: dict[str, str]
    workdir: str | None
    user: str | None
    entrypoint: list[str]
    cmd: list[str]
    digest: str


@dataclass(frozen=True)
class Reference:
    """A parsed, fully qualified image reference.

    Example: ``parse_reference("python:3.12")`` is
    ``Reference("docker.io", "library/python", "3.12", None)``.
    """

    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``host/repository``, e.g. ``docker.io/library/python``."""
        return f"{self.host}/{self.repository}"

    @property
    def transport(self) -> str:
        """The skopeo source or destination, e.g. ``docker://docker.io/library/python:3.12``."""
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"docker://{self.name}{suffix}"

    @property
    def hostname(self) -> str:
        """The host without its port or IPv6 brackets, e.g. ``::1`` for ``[::1]:5000``."""
        if self.host.startswith("["):
            return self.host[1 : self.host.index("]")]
        return self.host.split(":", 1)[0]

    @property
    def insecure(self) -> bool:
        """True for loopback registries, which are spoken to over plain HTTP."""
        if self.hostname.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.hostname).is_loopback
        except ValueError:
            return False


def parse_reference(ref: str) -> Reference:
    """Parse a Docker-style image reference, filling in Docker Hub, ``library/`` and ``latest``.

    A reference with both a tag and a digest keeps only the digest (the tag
    would be ignored by the registry anyway). Raises ``ValueError`` with the
    reason when ``ref`` is not a valid reference.

    Example: ``parse_reference("ghcr.io/x/y@sha256:" + "0" * 64).digest``.
    """
    text = ref.strip()
    text = text.removeprefix("docker://")
    if not text:
        raise ValueError("invalid image reference '': it is empty")
    text, digest = _split_digest(ref, text)
    host, path = _split_host(ref, text)
    path, tag = _split_tag(ref, path)
    _check_repository(ref, path)
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if digest is not None:
        tag = None
    elif tag is None:
        tag = "latest"
    return Reference(host, path, tag, digest)


def _split_digest(ref: str, text: str) -> tuple[str, str | None]:
    """``text`` without its ``@ALGORITHM:HEX`` suffix, and that digest (None without one)."""
    if "@" not in text:
        return text, None
    text, digest = text.split("@", 1)
    if not _DIGEST_RE.fullmatch(digest):
        raise ValueError(
            f"invalid image reference {ref!r}: digest {digest!r} is not ALGORITHM:HEX "
            "(like sha256:<64 hex digits>)"
        )
    return text, digest


def _split_host(ref: str, text: str) -> tuple[str, str]:
    """The registry host of ``text`` (Docker Hub when it names none) and the rest of it."""
    first, slash, rest = text.partition("/")
    # As Docker reads it: a first component is a host only if it looks like one.
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, text
    if not _HOST_RE.fullmatch(host):
        raise ValueError(f"invalid image reference {ref!r}: {host!r} is not a registry host")
    if host.lower() in _DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    return host, path


def _split_tag(ref: str, path: str) -> tuple[str, str | None]:
    """``path`` without its ``:TAG`` suffix, and that tag (None without one)."""
    last_slash = path.rfind("/")
    if ":" not in path[last_slash + 1 :]:
        return path, None
    path, tag = path.rsplit(":", 1)
    if not _TAG_RE.fullmatch(tag):
        raise ValueError(
            f"invalid image reference {ref!r}: tag {tag!r} must be 1-128 letters, digits, "
            "'_', '.' or '-' and not start with '.' or '-'"
        )
    return path, tag


def _check_repository(ref: str, path: str) -> None:
    """Raise ``ValueError`` unless ``path`` is a valid repository name."""
    if not path:
        raise ValueError(f"invalid image reference {ref!r}: the repository name is empty")
    for component in path.split("/"):
        if not _COMPONENT_RE.fullmatch(component):
            raise ValueError(
                f"invalid image reference {ref!r}: repository name component {component!r} "
                "must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            )


def normalize(ref: str) -> str:
    """The fully qualified skopeo transport string for a Docker-style reference.

    Example: ``normalize("python:3.12-slim") == "docker://docker.io/library/python:3.12-slim"``.
    """
    return parse_reference(ref).transport


def is_insecure_host(ref: str) -> bool:
    """True when ``ref`` names a loopback registry, used over plain HTTP without TLS checks.

    Example: ``is_insecure_host("127.0.0.1:5000/a/b") and not is_insecure_host("ghcr.io/a")``.
    """
    return parse_reference(ref).insecure


# ---------------------------------------------------------------------------
# pull


async def pull(
    ref: str,
    dest: Path,
    *,
    log: LogFn = _ignore,
    timeout: float = 900,
) -> ImageConfig:
    """Download image ``ref`` and unpack it as a root filesystem at ``dest``.

    ``dest`` must not exist (its parents are created); the work happens in a
    temporary directory beside it, so ``dest`` appears complete or not at all.
    Each line skopeo and umoci print goes to ``log`` as it arrives. Raises
    :class:`PullError` when the reference is invalid, the registry cannot be
    reached, the image or tag does not exist, a tool fails, or the whole pull
    takes longer than ``timeout`` seconds (the running tool is killed).

    Example: ``config = await pull("alpine:3.20", Path("/tmp/alpine"), log=print)``.
    """
    try:
        reference = parse_reference(ref)
    except ValueError as exc:
        raise PullError(str(exc), ref=ref) from None
    dest = Path(dest).absolute()
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"cannot pull {ref!r} into {dest}: it already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull-", dir=dest.parent))
    step = "starting"
    try:
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                step = "resolving the reference"
                digest = await _resolve_digest(reference, ref, work, log)
                step = "downloading the image"
                await _skopeo_copy_in(reference, digest, ref, work, log)
                config = _read_layout_config(work / "layout", digest, ref)
                step = "unpacking the layers"
                await _umoci_unpack(ref, work, log)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise PullError(
                f"pulling {ref!r} ({reference.transport}) timed out after {timeout:g}s "
                f"while {step} (the tool was stopped)",
                ref=ref,
            ) from None
        try:
            (work / "bundle" / "rootfs").rename(dest)
        except OSError as exc:
            raise PullError(
                f"pulled {ref!r} but could not move it to {dest}: {exc}", ref=ref
            ) from exc
        return config
    finally:
        await asyncio.to_thread(_remove_tree, work)


async def _resolve_digest(reference: Reference, ref: str, work: Path, log: LogFn) -> str:
    """The registry's digest for ``reference``: the sha256 of the manifest it serves."""
    argv = [*_skopeo(work), "inspect", "--raw", f"--retry-times={RETRY_TIMES}"]
    if reference.insecure:
        argv.append("--tls-verify=false")
    argv.append(reference.transport)
    result = await _run(argv, cwd=work, log=log, capture_stdout=True)
    if result.returncode != 0:
        raise _tool_failure(PullError, "pull", ref, reference, "skopeo inspect", result)
    return reference.digest or "sha256:" + hashlib.sha256(result.stdout).hexdigest()


async def _skopeo_copy_in(
    reference: Reference, digest: str, ref: str, work: Path, log: LogFn
) -> None:
    # Copy by digest, so that a tag moved since we resolved it cannot mix two images.
    source = Reference(reference.host, reference.repository, None, digest)
    argv = [
        *_skopeo(work),
        "copy",
        f"--retry-times={RETRY_TIMES}",
        "--remove-signatures",  # an OCI layout cannot store them, and pulls do not need them
    ]
    if reference.insecure:
        argv.append("--src-tls-verify=false")
    argv += [source.transport, f"oci:layout:{LAYOUT_TAG}"]
    result = await _run(argv, cwd=work, log=log)
    if result.returncode != 0:
        raise _tool_failure(PullError, "pull", ref, reference, "skopeo copy", result)


async def _umoci_unpack(ref: str, work: Path, log: LogFn) -> None:
    argv = ["umoci", "unpack", *_rootless(), "--image", f"layout:{LAYOUT_TAG}", "bundle"]
    result = await _run(argv, cwd=work, log=log)
    if result.returncode != 0:
        raise PullError(
            f"could not pull {ref!r}: umoci unpack failed (exit status {result.returncode})"
            f"{_format_tail(result.tail)}",
            ref=ref,
            stderr_tail=result.tail_text,
        )


def _read_layout_config(layout: Path, digest: str, ref: str) -> ImageConfig:
    """The image configuration of the ``LAYOUT_TAG`` image in an OCI layout."""
    try:
        index = _read_json(layout / "index.json")
        descriptors = [
            d
            for d in index.get("manifests") or []
            if (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == LAYOUT_TAG
        ]
        if len(descriptors) != 1:
            raise ValueError(f"expected one manifest tagged {LAYOUT_TAG!r} in index.json")
        if descriptors[0].get("mediaType") not in _MANIFEST_TYPES:
            raise ValueError(f"unexpected manifest type {descriptors[0].get('mediaType')!r}")
        manifest = _read_json(_blob(layout, descriptors[0]["digest"]))
        config = _read_json(_blob(layout, manifest["config"]["digest"])).get("config") or {}
        env: dict[str, str] = {}
        for entry in config.get("Env") or []:
            key, _, value = str(entry).partition("=")
            env[key] = value
        return ImageConfig(
            env=env,
            workdir=config.get("WorkingDir") or None,
            user=config.get("User") or None,
            entrypoint=[str(a) for a in config.get("Entrypoint") or []],
            cmd=[str(a) for a in config.get("Cmd") or []],
            digest=digest,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PullError(
            f"could not pull {ref!r}: the downloaded image has no readable configuration ({exc})",
            ref=ref,
        ) from exc


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if not algorithm.isalnum() or not hexdigest.isalnum():
        raise ValueError(f"malformed digest {digest!r}")
    return layout / "blobs" / algorithm / hexdigest


def _read_json(path: Path) -> Any:
    with path.open("rb") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


# ---------------------------------------------------------------------------
# running the tools


@dataclass
class _Result:
    returncode: int
    stdout: bytes
    tail: list[str]

    @property
    def tail_text(self) -> str:
        return "\n".join(self.tail)


async def _run(argv: list[str], *, cwd: Path, log: LogFn, capture_stdout: bool = False) -> _Result:
    """Run a tool, passing its output lines to ``log`` as they come; kill it if cancelled.

    With ``capture_stdout`` the standard output is collected as bytes instead of
    logged. The last ``TAIL_LINES`` lines of standard error are kept for errors.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        hint = rootless.install_hint(os.path.basename(argv[0]))
        return _Result(127, b"", [f"{argv[0]} is not installed ({hint})"])
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    captured = bytearray()

    def on_stderr(line: str) -> None:
        tail.append(line)
        log(line)

    assert proc.stdout is not None and proc.stderr is not None
    try:
        await asyncio.gather(
            _collect(proc.stdout, captured) if capture_stdout else _pump(proc.stdout, log),
            _pump(proc.stderr, on_stderr),
            proc.wait(),
        )
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return _Result(proc.returncode, bytes(captured), list(tail))


async def _pump(stream: asyncio.StreamReader, sink: LogFn) -> None:
    """Feed each line of ``stream`` to ``sink``, however long the line."""
    pending = b""
    while chunk := await stream.read(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            sink(line.decode(errors="replace").rstrip("\r"))
    if pending:
        sink(pending.decode(errors="replace").rstrip("\r"))


async def _collect(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        into += chunk


def _skopeo(work: Path) -> list[str]:
    """skopeo and its global options: temporary files in ``work``, a policy if none exists."""
    argv = ["skopeo", f"--tmpdir={work}"]
    if not any(p.expanduser().exists() for p in _POLICY_FILES):
        argv.append("--insecure-policy")  # no trust policy at all: skopeo would refuse to run
    return argv


def _rootless() -> list[str]:
    mapping = rootless.current()
    full_ids = os.geteuid() == 0 and (mapping is None or not mapping.single_id)
    return [] if full_ids else ["--rootless"]  # --rootless: files keep no owners but root


_DIAGNOSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("manifest unknown",), "{what} was not found in {name}"),
    (("name unknown", "repository name not known"), "{name} does not exist"),
    (
        ("unauthorized", "denied", "authentication required"),
        "access denied: {name} does not exist or needs credentials",
    ),
    (
        ("server gave http response to https client",),
        "{host} speaks plain HTTP, which ketch allows only for loopback registries",
    ),
    (("x509:", "certificate"), "the TLS certificate of {host} could not be verified"),
    (
        (
            "connection refused",
            "no such host",
            "i/o timeout",
            "network is unreachable",
            "no route to host",
            "connection reset",
            "tls handshake timeout",
            "dial tcp",
        ),
        "the registry {host} is unreachable",
    ),
)


def _tool_failure(
    kind: type[RegistryError],
    verb: str,
    ref: str,
    reference: Reference,
    tool: str,
    result: _Result,
) -> RegistryError:
    """An error saying what failed for which reference, with the tool's last words."""
    text = result.tail_text.lower() if tool.startswith("skopeo") else ""
    what = f"digest {reference.digest}" if reference.digest else f"tag {reference.tag!r}"
    reason = f"{tool} failed (exit status {result.returncode})"
    for needles, template in _DIAGNOSES:
        if text and any(needle in text for needle in needles):
            reason = template.format(what=what, name=reference.name, host=reference.host)
            break
    return kind(
        f"could not {verb} {ref!r} ({reference.transport}): {reason}{_format_tail(result.tail)}",
        ref=ref,
        stderr_tail=result.tail_text,
    )


def _format_tail(tail: Sequence[str]) -> str:
    if not tail:
        return ""
    return "\n  " + "\n  ".join(tail)


def _remove_tree(path: Path) -> None:
    """Remove ``path`` entirely, making read-only directories writable on the way."""

    def retry(func: Callable[[str], Any], failed: str, _exc: BaseException) -> None:
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
            func(failed)

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=lambda func, failed, info: retry(func, failed, info[1]))
