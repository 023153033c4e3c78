"""Container images: an immutable, ordered list of build steps.

Each build step is a layer addressed by ``sha256(parent hash + canonical JSON of
its spec)``; specs that copy local files or carry a pickled function include a
digest of those bytes. Local files added with ``copy=False`` are not layers but
*mounts* applied when a container starts, so editing them never rebuilds.

Example::

    image = (
        ketch.Image.debian_slim(python_version="3.12")
        .apt_install("git")
        .pip_install("numpy==2.1.0")
        .add_local_python_source("my_pkg")
    )
    image.hash  # the last layer's hash
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, NamedTuple

from . import _dockerfile
from ._config import in_container
from ._image_files import (
    container_path,
    content_digest,
    context_matches,
    existing_local_path,
    find_module_source,
    ignore_patterns,
    local_files,
    pickle_function,
    read_dockerignore,
)
from .exception import InvalidError

logger = logging.getLogger(__name__)

SUPPORTED_PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
PYTHON_SOURCE_ROOT = "/root"
WIRE_VERSION = 1
_HASH_VERSION = 1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::\d+)?"
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PART}(?:/{_PART})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


@dataclass(frozen=True)
class Step:
    """One build step. ``spec`` is hashed; ``local`` (where files live here) is not.

    Example::

        step = image.layers[-1].step
        step.kind, dict(step.spec)  # ('apt_install', {'packages': ('git',)})
    """

    kind: str
    spec: Mapping[str, Any]
    local: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    blob: bytes = b""
    force_build: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", _freeze(self.spec))
        object.__setattr__(self, "local", _freeze(self.local))


class Layer(NamedTuple):
    """A ``(hash, step)`` pair of :attr:`Image.layers`.

    Example::

        for digest, step in image.layers:
            print(digest[:12], step.kind)
    """

    hash: str
    step: Step


@dataclass(frozen=True)
class Mount:
    """Local files placed into the container when it starts (``copy=False``).

    ``kind`` is ``dir``, ``file`` or ``python_source``. Example::

        image.add_local_dir("data", "/data").mounts[0].remote_path  # '/data'
    """

    kind: str
    local_path: str
    remote_path: str
    ignore: tuple[str, ...] = ()


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


def _layer_hash(parent: str, step: Step) -> str:
    body = {"v": _HASH_VERSION, "kind": step.kind, "spec": _thaw(step.spec)}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(f"{parent}\n{text}".encode()).hexdigest()


def _sources(
    find_links: str | None, index_url: str | None, extra_index_url: str | None, extra_options: str
) -> dict[str, Any]:
    """A pip step's package sources and flags, checked; only those given (so a step without
    them keeps the layer hash it always had)."""
    given = {
        "find_links": find_links,
        "index_url": index_url,
        "extra_index_url": extra_index_url,
        "extra_options": extra_options or None,
    }
    for name, value in given.items():
        if value is not None and not isinstance(value, str):
            raise InvalidError(f"pip_install: {name} must be a string, got {value!r}")
    # extra_index_url always, as before; the others only when given.
    out = {k: v for k, v in given.items() if v is not None or k == "extra_index_url"}
    if extra_options:
        try:
            shlex.split(extra_options)
        except ValueError as exc:
            raise InvalidError(f"pip_install: extra_options {extra_options!r}: {exc}") from None
    return out


def _strings(values: Sequence[Any], what: str) -> list[str]:
    """Flatten nested lists of strings, keeping order; anything else is an error."""
    out: list[str] = []
    for value in values:
        if isinstance(value, list | tuple):
            out.extend(_strings(value, what))
        elif isinstance(value, str) and value.strip():
            out.append(value.strip())
        else:
            raise InvalidError(f"{what} takes non-empty strings (or lists of them), got {value!r}")
    return out


def _python_version(version: str | None, what: str) -> str:
    if version is None:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        if version not in SUPPORTED_PYTHON_VERSIONS:
            raise InvalidError(
                f"local Python {version} is not supported in images; pass {what}='3.12'"
            )
    if not isinstance(version, str) or not re.fullmatch(r"3\.\d+", version):
        raise InvalidError(f"{what} must look like '3.12', got {version!r}")
    if version not in SUPPORTED_PYTHON_VERSIONS:
        raise InvalidError(
            f"{what}={version!r} is not supported; choose one of {', '.join(SUPPORTED_PYTHON_VERSIONS)}"
        )
    return version


# Pythons Debian packages (bookworm and trixie): debian_slim's own; the others in
# SUPPORTED_PYTHON_VERSIONS come from uv (a download), see ketch.images.builder._debian.
DEBIAN_PYTHON_VERSIONS = ("3.11", "3.13")


def default_image() -> Image:
    """The image of functions that name none: ``debian_slim`` with this machine's Python.

    Where Debian has no package of the local Python (3.12, say), it is 3.11.
    Example: ``default_image().layers[0].step.spec["python_version"]``.
    """
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Image.debian_slim(local if local in DEBIAN_PYTHON_VERSIONS else "3.11")


class Image:
    """An immutable container image description; every method returns a new image.

    Example::

        image = ketch.Image.debian_slim().pip_install("requests").env({"MODE": "prod"})

        @app.function(image=image)
        def fetch(url: str) -> int: ...
    """

    _layers: tuple[Layer, ...]
    _mounts: tuple[Mount, ...]
    _notes: tuple[str, ...]

    def __init__(self) -> None:
        raise InvalidError(
            "create images with Image.debian_slim(), Image.from_registry() or Image.from_dockerfile()"
        )

    @classmethod
    def _make(
        cls, layers: Sequence[Layer], mounts: Sequence[Mount] = (), notes: Sequence[str] = ()
    ) -> Image:
        image = object.__new__(cls)
        image._layers, image._mounts, image._notes = tuple(layers), tuple(mounts), tuple(notes)
        return image

    def _step(self, kind: str, spec: Mapping[str, Any], force_build: bool, **extra: Any) -> Image:
        if self._mounts:
            raise InvalidError(
                f"image.{kind}() comes after local files added with copy=False, which are only "
                "placed in the container when it starts; add local files last, or pass copy=True"
            )
        step = Step(kind, spec, force_build=bool(force_build), **extra)
        parent = self._layers[-1].hash if self._layers else ""
        return Image._make((*self._layers, Layer(_layer_hash(parent, step), step)), (), self._notes)

    def _with(self, mounts: Sequence[Mount] = (), notes: Sequence[str] = ()) -> Image:
        return Image._make(self._layers, (*self._mounts, *mounts), (*self._notes, *notes))

    @property
    def layers(self) -> list[Layer]:
        """The ``(hash, step)`` pairs, base first. Example: ``[s.kind for _, s in image.layers]``."""
        return list(self._layers)

    @property
    def hash(self) -> str:
        """The last layer's hash, which identifies the whole build. Example: ``image.hash[:12]``."""
        return self._layers[-1].hash

    @property
    def object_id(self) -> str:
        """The image's id (``im-`` and its hash), for ``Image.from_id`` once it has been built
        (or snapshotted) on this control plane. Example: ``Image.from_id(image.object_id)``."""
        return f"im-{self.hash}"

    @classmethod
    def from_id(cls, image_id: str) -> Image:
        """The image built on this control plane under ``image_id`` (``image.object_id``), with
        every step it was built from; a ``NotFoundError`` if it was not built here or its
        layers have since been removed.

        Example: ``ketch.Image.from_id("im-3f2a…")``
        """
        from . import _sync
        from ._client import _Client

        async def fetch() -> dict[str, Any]:
            client = await _Client.get()
            reply: dict[str, Any] = await client.rpc("ImageFromId", {"image_id": image_id})
            return reply

        if not isinstance(image_id, str) or not image_id.startswith("im-"):
            raise InvalidError(f"an image id looks like 'im-<hash>', not {image_id!r}")
        return cls.from_wire(_sync.run_sync(fetch())["image"])

    def build(self, app: Any = None) -> Image:
        """Build the image now (output on stderr), rather than when an app that uses it
        starts; ``app`` is accepted as in Modal. Returns the image, whose ``object_id``
        ``Image.from_id`` then finds. Example: ``image = ketch.Image.debian_slim().build()``
        """
        from . import _sync
        from ._client import _Client
        from .app import build_image

        async def run() -> None:
            await build_image(await _Client.get(), self.to_wire())

        _sync.run_sync(run())
        return self

    @property
    def mounts(self) -> list[Mount]:
        """Local files placed at container start (``copy=False``). Example: ``image.mounts[0].remote_path``."""
        return list(self._mounts)

    @property
    def notes(self) -> list[str]:
        """Things ketch ignored, such as a Dockerfile's ``CMD``. Example: ``print(*image.notes)``."""
        return list(self._notes)

    @property
    def rebuild_from(self) -> int | None:
        """Index of the first layer marked ``force_build``; it and every later layer are rebuilt.

        Example: ``Image.debian_slim().pip_install("x", force_build=True).rebuild_from == 1``.
        """
        return next((i for i, layer in enumerate(self._layers) if layer.step.force_build), None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return (self._layers, self._mounts, self._notes) == (
            other._layers,
            other._mounts,
            other._notes,
        )

    def __hash__(self) -> int:
        return hash((self.hash, self._mounts))

    def __repr__(self) -> str:
        kinds = " -> ".join(layer.step.kind for layer in self._layers)
        mounts = f", {len(self._mounts)} mounts" if self._mounts else ""
        return f"Image({kinds}{mounts}, hash={self.hash[:12]})"

    @classmethod
    def debian_slim(cls, python_version: str | None = None, *, force_build: bool = False) -> Image:
        """Debian slim with Python (default: this machine's ``major.minor``).

        Example: ``Image.debian_slim(python_version="3.12")``.
        """
        version = _python_version(python_version, "python_version")
        return cls._make(())._step("debian_slim", {"python_version": version}, force_build)

    @classmethod
    def from_registry(
        cls, tag: str, *, add_python: str | None = None, force_build: bool = False
    ) -> Image:
        """An image pulled from an OCI registry, optionally with a standalone Python added.

        Example: ``Image.from_registry("nvidia/cuda:12.4.1-runtime-ubuntu22.04", add_python="3.12")``.
        """
        if not isinstance(tag, str) or not _REFERENCE.fullmatch(tag):
            raise InvalidError(
                f"invalid image reference {tag!r}: expected [registry/]name[:tag][@digest] "
                "with a lowercase name, e.g. 'python:3.12-slim'"
            )
        python = _python_version(add_python, "add_python") if add_python is not None else None
        return cls._make(())._step("from_registry", {"tag": tag, "add_python": python}, force_build)

    def pip_install(
        self,
        *packages: str | list[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
    ) -> Image:
        """Install Python packages with pip. Example: ``image.pip_install("numpy<3", ["pandas"])``.

        ``index_url``/``extra_index_url``/``find_links`` say where packages come from
        (``find_links``: a URL, or a folder in the image); ``extra_options`` are more
        installer flags, e.g. ``"--no-deps"``.
        """
        sources = _sources(find_links, index_url, extra_index_url, extra_options)
        return self._install("pip_install", packages, sources, pre, force_build)

    def uv_pip_install(
        self,
        *packages: str | list[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
    ) -> Image:
        """Install Python packages with uv. Example: ``image.uv_pip_install("torch==2.5.1")``."""
        sources = _sources(find_links, index_url, extra_index_url, extra_options)
        return self._install("uv_pip_install", packages, sources, pre, force_build)

    def _install(
        self, kind: str, packages: Sequence[Any], sources: dict[str, Any], pre: bool, force: bool
    ) -> Image:
        names = _strings(packages, kind)
        if not names:
            return self
        return self._step(kind, {"packages": names, **sources, "pre": bool(pre)}, force)

    def pip_install_from_requirements(
        self,
        requirements_txt: str | os.PathLike[str],
        *,
        extra_index_url: str | None = None,
        pre: bool = False,
        force_build: bool = False,
    ) -> Image:
        """Install a requirements file; its contents are part of the layer hash.

        Example: ``image.pip_install_from_requirements("requirements.txt")``.
        """
        path = existing_local_path(requirements_txt, "pip_install_from_requirements", "file")
        spec = {
            "requirements": path.read_text(encoding="utf-8") if path.is_file() else "",
            "extra_index_url": extra_index_url,
            "pre": bool(pre),
        }
        return self._step(
            "pip_install_from_requirements", spec, force_build, local={"local_path": str(path)}
        )

    def apt_install(self, *packages: str | list[str], force_build: bool = False) -> Image:
        """Install Debian packages. Example: ``image.apt_install("git", "ffmpeg")``."""
        names = _strings(packages, "apt_install")
        return self._step("apt_install", {"packages": names}, force_build) if names else self

    def run_commands(self, *commands: str | list[str], force_build: bool = False) -> Image:
        """Run shell commands in the image. Example: ``image.run_commands("curl -sSf x.sh | sh")``."""
        lines = _strings(commands, "run_commands")
        return self._step("run_commands", {"commands": lines}, force_build) if lines else self

    def run_function(
        self,
        fn: Callable[..., Any],
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        force_build: bool = False,
    ) -> Image:
        """Run ``fn(*args, **kwargs)`` during the build (to download weights, say).

        The function is pickled by value with its arguments; those bytes are hashed.
        Example: ``image.run_function(download_model, args=("bert-base",))``.
        """
        if not callable(fn):
            raise InvalidError(f"run_function needs a callable, got {fn!r}")
        if not isinstance(args, list | tuple) or not isinstance(kwargs or {}, Mapping):
            raise InvalidError("run_function: args must be a tuple and kwargs a dict")
        blob = pickle_function(fn, tuple(args), dict(kwargs or {}))
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        spec = {"function": name, "pickle_sha256": hashlib.sha256(blob).hexdigest()}
        return self._step("run_function", spec, force_build, blob=blob)

    def env(self, vars: Mapping[str, str], *, force_build: bool = False) -> Image:
        """Set environment variables for later steps and containers. Example: ``image.env({"HF_HOME": "/cache"})``."""
        if not isinstance(vars, Mapping):
            raise InvalidError(f"env takes a dict of str to str, got {vars!r}")
        for key, value in vars.items():
            if (
                not isinstance(key, str)
                or not _ENV_NAME.fullmatch(key)
                or not isinstance(value, str)
            ):
                raise InvalidError(
                    f"env: {key!r}={value!r} must be a variable name and a string value"
                )
        return self._step("env", {"vars": dict(vars)}, force_build) if vars else self

    def workdir(self, path: str | PurePosixPath, *, force_build: bool = False) -> Image:
        """Set the working directory; a relative path extends the previous one. Example: ``image.workdir("/app")``."""
        if not isinstance(path, str | PurePosixPath) or not str(path).strip():
            raise InvalidError(f"workdir needs a path, got {path!r}")
        return self._step("workdir", {"path": self._in_workdir(str(path))}, force_build)

    def _in_workdir(self, path: str) -> str:
        """Resolve ``path`` against the last ``workdir`` (``/`` if none), keeping a trailing ``/``."""
        base = next((s.spec["path"] for _, s in reversed(self._layers) if s.kind == "workdir"), "/")
        joined = posixpath.normpath(posixpath.join(base, path))
        return joined + "/" if path.endswith("/") and joined != "/" else joined

    def add_local_dir(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        copy: bool = False,
        ignore: Sequence[str] = (),
        force_build: bool = False,
    ) -> Image:
        """Put a local directory's contents at ``remote_path``; ``ignore`` takes dockerignore patterns.

        Example: ``image.add_local_dir("assets", "/assets", ignore=["**/*.tmp"])``.
        """
        local = existing_local_path(local_path, "add_local_dir", "dir")
        remote = container_path(remote_path, "add_local_dir remote_path").rstrip("/") or "/"
        return self._local(
            "dir", str(local), remote, ignore_patterns(ignore, "add_local_dir"), copy, force_build
        )

    def add_local_file(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        copy: bool = False,
        force_build: bool = False,
    ) -> Image:
        """Put one local file at ``remote_path`` (into it, if it ends with ``/``).

        Example: ``image.add_local_file("config.toml", "/etc/app/")``.
        """
        local = existing_local_path(local_path, "add_local_file", "file")
        remote = container_path(remote_path, "add_local_file remote_path")
        remote = remote + local.name if remote.endswith("/") else remote
        return self._local("file", str(local), remote, (), copy, force_build)

    def add_local_python_source(
        self,
        *module_names: str,
        copy: bool = False,
        ignore: Sequence[str] | None = None,
        force_build: bool = False,
    ) -> Image:
        """Add local Python modules or packages under ``/root``, found without importing them.

        Only ``.py`` files are included unless ``ignore`` is given.
        Example: ``image.add_local_python_source("my_pkg", "helpers")``.
        """
        image = self
        for name in _strings(module_names, "add_local_python_source"):
            try:
                path, is_package = find_module_source(name)
            except InvalidError:
                if in_container():
                    continue  # the client added it; here the description is never used
                raise
            remote = posixpath.join(PYTHON_SOURCE_ROOT, *name.split(".")) + (
                "" if is_package else ".py"
            )
            patterns = (
                ignore_patterns(ignore, "add_local_python_source")
                if ignore is not None
                else ("**", "!**/*.py", "**/__pycache__")
            )
            image = image._local(
                "python_source",
                str(path),
                remote,
                patterns if is_package else (),
                copy,
                force_build,
            )
        return image

    def _local(
        self,
        kind: str,
        local: str,
        remote: str,
        ignore: tuple[str, ...],
        copy: bool,
        force: bool,
        prefix: str = "",
    ) -> Image:
        if not copy:
            return self._with(mounts=[Mount(kind, local, remote, ignore)])
        digest = (
            "client-side" if in_container() else content_digest(local_files(local, ignore, prefix))
        )
        spec = {"type": kind, "remote_path": remote, "digest": digest}
        info = {"local_path": local, "ignore": ignore, "prefix": prefix}
        return self._step("add_local_" + kind, spec, force, local=info)

    @classmethod
    def from_dockerfile(
        cls,
        path: str | os.PathLike[str],
        *,
        context_dir: str | os.PathLike[str] | None = None,
        build_args: Mapping[str, str] | None = None,
        force_build: bool = False,
    ) -> Image:
        """An image from a single-stage Dockerfile; ``COPY`` reads from ``context_dir``.

        ``context_dir`` defaults to the Dockerfile's folder, whose ``.dockerignore``
        is honoured. Ignored instructions (``CMD``, ``EXPOSE``...) are listed in ``notes``.
        Example: ``Image.from_dockerfile("Dockerfile", build_args={"VERSION": "1.2"})``.
        """
        dockerfile = existing_local_path(path, "from_dockerfile", "file")
        context = existing_local_path(
            context_dir if context_dir is not None else dockerfile.parent, "context_dir", "dir"
        )
        if in_container() and not dockerfile.is_file():
            return cls.debian_slim()  # built on the client already; never used here
        parsed = _dockerfile.parse(dockerfile.read_text(encoding="utf-8"), build_args)
        ignore = read_dockerignore(context)
        image = cls._make(())
        for step in parsed.steps:
            try:
                image = image._docker_step(step, context, ignore, force_build and not image._layers)
            except InvalidError as exc:
                if str(exc).startswith("Dockerfile line"):
                    raise
                raise InvalidError(f"Dockerfile line {step.line}: {exc}") from None
        return image._with(notes=parsed.notes)

    def dockerfile_commands(
        self,
        *dockerfile_commands: str | list[str],
        context_dir: str | os.PathLike[str] | None = None,
        build_args: Mapping[str, str] | None = None,
        force_build: bool = False,
    ) -> Image:
        """Dockerfile instructions (``RUN``, ``ENV``, ``WORKDIR``, ``COPY``, ``USER``...) on top
        of this image; ``COPY`` reads from ``context_dir`` (default: the current folder).

        Example: ``image.dockerfile_commands("RUN apt-get update", "ENV MODE=prod")``.
        """
        lines: list[str] = []
        for item in dockerfile_commands:
            lines.extend([item] if isinstance(item, str) else list(item))
        context = existing_local_path(context_dir or ".", "context_dir", "dir")

        # A FROM the parser needs, dropped below: the commands go on this image.
        def renumber(text: str) -> str:  # the lines as the caller counts them
            return re.sub(
                r"Dockerfile line (\d+)",
                lambda m: f"dockerfile_commands line {int(m.group(1)) - 1}",
                text,
            )

        try:
            parsed = _dockerfile.parse("FROM ketch-this-image\n" + "\n".join(lines), build_args)
        except InvalidError as exc:
            raise InvalidError(renumber(str(exc))) from None
        ignore = read_dockerignore(context) if context_dir is not None else ()
        image = self
        for step in parsed.steps[1:]:
            try:
                image = image._docker_step(step, context, ignore, False)
            except InvalidError as exc:
                raise InvalidError(f"dockerfile_commands line {step.line - 1}: {exc}") from None
        notes = [renumber(note) for note in parsed.notes]
        if force_build:
            notes.append(
                "dockerfile_commands(force_build=True) is ignored: use KETCH_FORCE_BUILD=1"
            )
        return image._with(notes=notes)

    def entrypoint(self, entrypoint_commands: list[str]) -> Image:
        """Accepted for Modal apps: ketch starts its own process in a container, so an
        entrypoint (often ``[]``, to clear a registry image's) is noted and not run."""
        return (
            self
            if not entrypoint_commands
            else self._with(notes=[f"ENTRYPOINT {entrypoint_commands!r} is not run"])
        )

    def shell(self, shell_commands: list[str]) -> Image:
        """Accepted for Modal apps: ``run_commands`` steps run under ``/bin/sh -c``."""
        return self._with(notes=[f"SHELL {shell_commands!r} is not used"])

    def cmd(self, cmd: list[str]) -> Image:
        """Accepted for Modal apps: a container runs ketch, never the image's command."""
        return self._with(notes=[f"CMD {cmd!r} is not run"])

    def _docker_step(
        self, step: _dockerfile.DockerStep, context: Path, ignore: tuple[str, ...], force: bool
    ) -> Image:
        spec = step.spec
        if step.kind == "from_registry":
            return Image.from_registry(spec["tag"], force_build=force)
        if step.kind == "run_commands":
            return self.run_commands(*spec["commands"])
        if step.kind == "env":
            return self.env(spec["vars"])
        if step.kind == "workdir":
            return self.workdir(spec["path"])
        if step.kind == "user":
            return self._step("user", {"user": spec["user"]}, False)
        matches: list[Path] = []
        for source in spec["sources"]:
            matches.extend(context_matches(context, source, ignore, step.line))
        into_dir = spec["dest"].endswith("/") or posixpath.basename(spec["dest"]) in (".", "..")
        dest = self._in_workdir(spec["dest"])
        dest = dest.rstrip("/") + "/" if into_dir else dest
        if len(matches) > 1 and not dest.endswith("/"):
            raise InvalidError(
                f"Dockerfile line {step.line}: with several sources the destination must end with /"
            )
        image = self
        for match in matches:
            rel = match.relative_to(context).as_posix()
            prefix = "" if rel == "." else rel + "/"
            if match.is_dir():
                remote = dest.rstrip("/") or "/"
                image = image._local("dir", str(match), remote, ignore, True, False, prefix=prefix)
            else:
                remote = dest + match.name if dest.endswith("/") else dest
                image = image._local("file", str(match), remote, (), True, False)
        return image

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """Import packages that exist only in the image; locally an ``ImportError`` is skipped.

        Example::

            with image.imports():
                import torch
        """
        try:
            yield
        except ImportError as exc:
            if in_container():
                raise
            logger.debug("skipping import outside the container: %s", exc)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-able dict of layers (with hashes), mounts and notes.

        Example: ``Image.from_wire(image.to_wire()) == image``.
        """
        layers = [
            {
                "hash": h,
                "kind": s.kind,
                "spec": _thaw(s.spec),
                "local": _thaw(s.local),
                "blob": s.blob,
                "force_build": s.force_build,
            }
            for h, s in self._layers
        ]
        mounts = [
            {
                "kind": m.kind,
                "local_path": m.local_path,
                "remote_path": m.remote_path,
                "ignore": list(m.ignore),
            }
            for m in self._mounts
        ]
        return {
            "version": WIRE_VERSION,
            "layers": layers,
            "mounts": mounts,
            "notes": list(self._notes),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Image:
        """Rebuild an image from :meth:`to_wire`, checking every layer hash.

        Example: ``image = Image.from_wire(msgpack.unpackb(body))``.
        """
        if (
            not isinstance(data, Mapping)
            or data.get("version") != WIRE_VERSION
            or not data.get("layers")
        ):
            raise InvalidError(f"not an image spec of wire version {WIRE_VERSION}")
        try:
            layers: list[Layer] = []
            for item in data["layers"]:
                step = Step(
                    item["kind"],
                    item["spec"],
                    item["local"],
                    bytes(item["blob"]),
                    bool(item["force_build"]),
                )
                expected = _layer_hash(layers[-1].hash if layers else "", step)
                if item["hash"] != expected:
                    raise InvalidError(
                        f"image layer {item['kind']} has hash {item['hash']!r}, expected {expected!r}"
                    )
                layers.append(Layer(expected, step))
            mounts = [
                Mount(m["kind"], m["local_path"], m["remote_path"], tuple(m["ignore"]))
                for m in data["mounts"]
            ]
            notes = [str(n) for n in data["notes"]]
        except (KeyError, TypeError) as exc:
            raise InvalidError(f"malformed image spec: {exc!r}") from None
        return cls._make(layers, mounts, notes)
