"""Build an :class:`~ketch.image.Image` into cached layers.

Each layer is built on an overlay of its parent layers: the step runs in a
bubblewrap sandbox of the image (with the host network, as root of the node's
user namespace where there is one: :mod:`ketch.worker.userns`), and what it
changed (the overlay's upper directory) becomes the layer, with the on-disk
ids it would have had as host root. Steps that only set
configuration (``env``, ``workdir``, ``user``) make empty layers. A layer that
is already cached costs nothing; ``force_build`` rebuilds a step and all later
ones.

Decisions (also in docs/architecture.md):

* ``debian_slim`` is Debian bookworm (Python 3.11) or trixie (Python 3.13) made
  with debootstrap ``minbase``; other Python versions cannot be provided from
  Debian's archive and fail the build with a clear error.
* ``pip_install`` and ``uv_pip_install`` both install with uv (``uv pip install
  --system``), which is pip-compatible and much faster; uv is bound into the
  build from ketch's own dependency, never left in the image.
* ``from_registry(add_python=...)`` installs Python with the image's apt.

Example::

    builder = Builder(LayerStore(cache))
    built = await builder.build(image.to_wire(), log=print)
    built.lowers  # overlay lower dirs, top first
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shlex
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._config import config
from .._image_files import content_digest, local_files
from ..exception import ImageBuildError
from ..worker import isolate, rootless, userns
from ..worker.userns import Staging, UserNamespace, restore_ids
from .bundle import MOUNT_POINT, Bundles, uv_binary
from .layers import LayerStore, remove_tree

logger = logging.getLogger(__name__)

Log = Callable[[str], None]
# Steps that run programs in a sandbox of the image (the others only copy files or set
# configuration): on a Ray cluster these are built on a node (``Builder.remote``).
SANDBOX_STEPS = frozenset(
    {
        "debian_slim",
        "from_registry",
        "pip_install",
        "uv_pip_install",
        "pip_install_from_requirements",
        "apt_install",
        "run_commands",
        "run_function",
    }
)
DEBIAN_SUITES = {"3.11": "bookworm", "3.13": "trixie"}
KETCH_DIR = "/.ketch"
STEP_TIMEOUT_S = 3600.0
OUTPUT_TAIL = 60


@dataclass(frozen=True)
class BuiltImage:
    """A built image: its layers (base first), overlay lowers, and configuration."""

    hash: str
    chain: tuple[str, ...]
    lowers: tuple[Path, ...]
    config: Mapping[str, Any]

    @property
    def python(self) -> str:
        return str(self.config.get("python") or "python3")

    @property
    def python_version(self) -> str:
        return str(self.config.get("python_version") or "")


def summarize(kind: str, spec: Mapping[str, Any]) -> str:
    """A one-line description of a step for logs and ``ketch image list``."""
    if kind == "debian_slim":
        return f"debian_slim python {spec['python_version']}"
    if kind == "from_registry":
        extra = f" + python {spec['add_python']}" if spec.get("add_python") else ""
        return f"from_registry {spec['tag']}{extra}"
    if kind in ("pip_install", "uv_pip_install", "apt_install"):
        return f"{kind} {' '.join(spec['packages'])}"
    if kind == "pip_install_from_requirements":
        lines = [
            x for x in spec["requirements"].splitlines() if x.strip() and not x.startswith("#")
        ]
        return f"{kind} ({len(lines)} requirements)"
    if kind == "run_commands":
        return "run_commands " + " && ".join(spec["commands"])
    if kind == "run_function":
        return f"run_function {spec['function']}"
    if kind == "env":
        return "env " + " ".join(f"{k}={v}" for k, v in spec["vars"].items())
    if kind == "workdir":
        return f"workdir {spec['path']}"
    if kind == "user":
        return f"user {spec['user']}"
    if kind.startswith("add_local_"):
        return f"{kind} -> {spec['remote_path']}"
    if kind == "snapshot":
        return f"snapshot of sandbox {spec['sandbox_id']}"
    return kind


class StepFailed(Exception):
    """A build step failed: ``str()`` says how, ``tail`` is the end of its output."""

    def __init__(self, message: str, tail: Sequence[str]) -> None:
        super().__init__(message)
        self.tail = list(tail)


# Builds one layer elsewhere and installs it in this store: (layer, chain, cfg, log).
RemoteStep = Callable[[Mapping[str, Any], Sequence[str], dict[str, Any], Log], Awaitable[None]]


def _uv_pip_argv(spec: Mapping[str, Any], python: str) -> list[str]:
    """``uv pip install`` for a pip step, its sources and flags (the packages go after)."""
    argv = [f"{KETCH_DIR}/job/uv", "pip", "install", "--system", "--break-system-packages"]
    # Bytecode is compiled now, once, instead of in every container's first import.
    argv += ["--python", python, "--no-progress", "--compile-bytecode"]
    for key, flag in (
        ("index_url", "--index-url"),
        ("extra_index_url", "--extra-index-url"),
        ("find_links", "--find-links"),
    ):
        if spec.get(key):
            argv += [flag, spec[key]]
    argv += shlex.split(spec.get("extra_options") or "")
    if spec.get("pre"):
        argv += ["--prerelease", "allow"]
    return argv


class Builder:
    """Builds images into a :class:`LayerStore`; one per control plane."""

    def __init__(self, store: LayerStore, userns: UserNamespace | None = None) -> None:
        self.store = store
        self.userns = userns  # build steps run as its root (None: as host root)
        self.bundles = Bundles(store)
        self.remote: RemoteStep | None = None  # where sandbox steps run instead (a Ray node)
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    def cached(self, wire: Mapping[str, Any]) -> BuiltImage | None:
        """The built image if every layer is cached (no build needed), else None."""
        chain = [layer["hash"] for layer in wire["layers"]]
        if not all(self.store.has(h) for h in chain):
            return None
        return self._built(chain)

    def _built(self, chain: Sequence[str]) -> BuiltImage:
        top = self.store.meta(chain[-1])
        probed = self.store.path(chain[-1]) / "python.json"
        cfg = dict(top.get("config", {}))
        if probed.exists():
            cfg.update(json.loads(probed.read_text()))
        return BuiltImage(chain[-1], tuple(chain), tuple(self.store.lowers(chain)), cfg)

    async def build(
        self, wire: Mapping[str, Any], log: Log, force: str = "", bundle: bool = True
    ) -> BuiltImage:
        """Build what is missing; ``force="marked"`` also rebuilds from the first
        ``force_build`` step on, ``force="all"`` rebuilds every layer. ``bundle``: also
        prepare the ketch bundle for the image's Python (a node's build leaves that to the
        control plane, which ships its own)."""
        layers = list(wire["layers"])
        total = len(layers)
        rebuild_from = total
        if force == "all":
            rebuild_from = 0
        elif force:
            marked = [i for i, layer in enumerate(layers) if layer.get("force_build")]
            rebuild_from = marked[0] if marked else total
        chain: list[str] = []
        cfg: dict[str, Any] = {}
        for index, layer in enumerate(layers):
            layer_hash, kind, spec = layer["hash"], layer["kind"], layer["spec"]
            label = f"[{index + 1}/{total}] {summarize(kind, spec)}"
            forced = index >= rebuild_from
            async with self._locks[layer_hash], self.store.alock(layer_hash):
                if self.store.has(layer_hash) and not forced:
                    log(f"=> {label} (cached)")
                else:
                    log(f"=> {label}")
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    try:
                        if self.remote is not None and kind in SANDBOX_STEPS:
                            await self.remote(layer, chain, cfg, log)
                        else:
                            await self.build_layer(layer, chain, cfg, log)
                    except StepFailed as exc:
                        tail = "\n".join(exc.tail[-OUTPUT_TAIL:])
                        raise ImageBuildError(
                            f"image build failed at step {label}: {exc}"
                            + (f"\n--- output (last lines) ---\n{tail}" if tail else "")
                        ) from None
                    log(f"=> {label} done in {loop.time() - started:.1f}s")
            cfg = dict(self.store.meta(layer_hash).get("config", {}))
            chain.append(layer_hash)
        self.store.touch(chain)
        built = self._built(chain)
        if not built.config.get("python"):
            await self._probe_python(built, log)
            built = self._built(chain)
        if bundle:
            await self.prepare_bundle(built, log)
        return built

    # -- steps ---------------------------------------------------------------
    async def build_layer(
        self, layer: Mapping[str, Any], chain: Sequence[str], cfg: dict[str, Any], log: Log
    ) -> None:
        """Build the one layer ``layer`` over ``chain`` (every layer of it cached here),
        whose configuration is ``cfg``; raises :class:`StepFailed`."""
        kind, spec, layer_hash = layer["kind"], layer["spec"], layer["hash"]
        build_dir = self.store.new_build_dir(layer_hash)
        fs = build_dir / "fs"
        fs.mkdir()
        cfg = {**cfg, "env": dict(cfg.get("env", {}))}
        try:
            if kind == "debian_slim":
                cfg = await self._debian(spec["python_version"], fs, log)
            elif kind == "from_registry":
                cfg = await self._registry(spec, fs, log)
            elif kind == "env":
                cfg["env"].update(spec["vars"])
            elif kind == "workdir":
                cfg["workdir"] = spec["path"].rstrip("/") or "/"
                (fs / cfg["workdir"].lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif kind == "user":
                cfg["user"] = spec["user"]
            elif kind.startswith("add_local_"):
                self._copy_local(layer, fs)
            elif kind == "snapshot":  # made by Sandbox.snapshot_filesystem, never built
                raise StepFailed(
                    "this sandbox snapshot is no longer in the image cache (`ketch image rm` "
                    "or `prune` removed it); take a new one",
                    [],
                )
            else:
                await self._run_step(kind, spec, layer, chain, cfg, build_dir, log)
            meta = {
                "parent": chain[-1] if chain else "",
                "kind": kind,
                "summary": summarize(kind, spec),
                "config": cfg,
            }
            self.store.commit(build_dir, layer_hash, meta)
        finally:
            remove_tree(build_dir)

    async def _debian(self, version: str, fs: Path, log: Log) -> dict[str, Any]:
        """Debian with Python ``version``: Debian's own where Debian packages that version,
        else a uv-managed build (python-build-standalone) over bookworm."""
        suite = DEBIAN_SUITES.get(version)
        managed: Path | None = None
        if suite is None:
            managed = await self._uv_python(version, fs.parent, log)
            suite = DEBIAN_SUITES["3.11"]
        argv = self._bootstrap_argv(suite, fs)
        await self._stream(argv, log, argv[0], env={**os.environ, "LC_ALL": "C"})
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for entry in (fs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        (fs / "usr/local/bin").mkdir(parents=True, exist_ok=True)
        python = "/usr/bin/python3"
        if managed is not None:
            (fs / "opt").mkdir(exist_ok=True)
            shutil.move(str(managed), fs / "opt/python")
            remove_tree(managed.parent)  # uv's lock and cache files
            python = f"/opt/python/bin/python{version}"
            for name in ("python3", f"python{version}"):
                os.symlink(python, fs / "usr/local/bin" / name)
        with contextlib.suppress(FileExistsError):
            os.symlink(python, fs / "usr/local/bin/python")
        (fs / "root").mkdir(exist_ok=True)
        return {
            "env": {},
            "workdir": "/root",
            "user": None,
            "python": python,
            "python_version": version,
            "base": f"debian {suite}" + (f", uv-managed Python {version}" if managed else ""),
        }

    async def _uv_python(self, version: str, scratch: Path, log: Log) -> Path:
        """A uv-managed CPython ``version`` (relocatable), downloaded into ``scratch``;
        a ``StepFailed`` naming both ways to a Python when uv cannot get one."""
        target = scratch / "uv-python"
        argv = [uv_binary(), "python", "install", version, "--install-dir", str(target)]
        argv += ["--no-bin"] if await self._uv_has_no_bin() else []
        env = {**os.environ, "UV_PYTHON_INSTALL_DIR": str(target)}
        try:
            await self._stream(argv, log, "uv python install", env=env)
        except StepFailed as exc:
            offered = ", ".join(f"{v} ({s})" for v, s in DEBIAN_SUITES.items())
            raise StepFailed(
                f"python_version={version!r} cannot be provided: Debian packages Python "
                f"{offered}, and uv could not download Python {version} "
                "(python-build-standalone, from GitHub unless UV_PYTHON_INSTALL_MIRROR names "
                "a mirror): give this machine that access, or choose one of Debian's",
                exc.tail,
            ) from None
        found = sorted(p for p in target.glob(f"cpython-{version}.*") if (p / "bin").is_dir())
        if not found:
            raise StepFailed(f"uv installed no CPython {version} under {target}", [])
        return found[-1]

    async def _uv_has_no_bin(self) -> bool:
        """Whether this uv takes ``python install --no-bin`` (0.8 and later)."""
        proc = await asyncio.create_subprocess_exec(
            uv_binary(),
            "python",
            "install",
            "--help",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return b"--no-bin" in out

    def _bootstrap_argv(self, suite: str, fs: Path) -> list[str]:
        """debootstrap as host root; mmdebstrap as root of a rootless control plane's
        namespace (debootstrap needs mknod, which no user namespace has)."""
        mapping = rootless.current()
        packages = "python3,ca-certificates"
        if mapping is None:
            if shutil.which("debootstrap") is None:
                raise StepFailed("debootstrap is not installed (apt-get install debootstrap)", [])
            debs = self.store.root / "debs" / suite
            debs.mkdir(parents=True, exist_ok=True)
            return [
                "debootstrap",
                "--variant=minbase",
                f"--include={packages}",
                f"--cache-dir={debs}",
                suite,
                str(fs),
                config.get("debian_mirror"),
            ]
        if mapping.single_id:
            raise StepFailed(
                f"debian_slim cannot be built here: {mapping.user} has no subordinate ids "
                "mapped (Debian's packages own files as several users); ask an administrator: "
                + rootless.admin_command(mapping.user),
                [],
            )
        if shutil.which("mmdebstrap") is None:
            raise StepFailed(
                "mmdebstrap is not installed (it builds debian_slim without root); ask an "
                "administrator: " + rootless.admin_command(mapping.user),
                [],
            )
        mirror = config.get("debian_mirror")
        return [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            f"--include={packages}",
            suite,
            str(fs),
            mirror,
        ]

    async def _registry(self, spec: Mapping[str, Any], fs: Path, log: Log) -> dict[str, Any]:
        from .registry import RegistryError, pull

        fs.rmdir()
        try:
            image_config = await pull(spec["tag"], fs, log=log)
        except (RegistryError, ValueError) as exc:
            raise StepFailed(str(exc), []) from None
        cfg: dict[str, Any] = {
            "env": {k: v for k, v in image_config.env.items() if k != "PATH"},
            "path": image_config.env.get("PATH"),
            "workdir": image_config.workdir or "/",
            "user": image_config.user or None,
            "python": None,
            "python_version": None,
            "base": spec["tag"],
        }
        want = spec.get("add_python")
        if want:
            script = (
                "if ! command -v apt-get >/dev/null; then echo 'ketch: this image has no apt-get' >&2; exit 97; fi\n"
                "export DEBIAN_FRONTEND=noninteractive\n"
                f"apt-get {_apt_options()} update -q && apt-get {_apt_options()} install -y -q --no-install-recommends python3 ca-certificates\n"
                "rc=$?; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; exit $rc"
            )
            await self._sandbox(fs, ["/bin/sh", "-c", script], cfg, log, "add_python")
        found = await self._find_python(fs, cfg, log)
        if want and found and found[1] != want:
            raise StepFailed(
                f"add_python={want!r}: the image's package manager installs Python {found[1]}; "
                "ketch adds Python with the image's apt (only Debian's archive is reachable), "
                f"so ask for add_python={found[1]!r} or use a base image with Python {want}",
                [],
            )
        if found:
            cfg["python"], cfg["python_version"] = found
        return cfg

    async def _find_python(
        self, fs: Path, cfg: Mapping[str, Any], log: Log
    ) -> tuple[str, str] | None:
        script = (
            "for p in python3 python; do c=$(command -v $p) && "
            '{ echo "$c"; "$c" -c "import sys; print(\'%d.%d\' % sys.version_info[:2])"; exit 0; }; done; exit 3'
        )
        lines: list[str] = []
        try:
            await self._sandbox(fs, ["/bin/sh", "-c", script], cfg, lines.append, "find python")
        except StepFailed:
            return None
        return (lines[0].strip(), lines[1].strip()) if len(lines) >= 2 else None

    async def _probe_python(self, built: BuiltImage, log: Log) -> None:
        with _Overlay(self.store, built.lowers, built.hash, self.userns) as root:
            await root.mount()
            found = await self._find_python(root.merged, built.config, log)
        if found is None:
            raise ImageBuildError(
                f"image {built.hash[:12]} has no Python: use Image.from_registry(..., add_python='3.11') "
                "or install python3 in a step"
            )
        (self.store.path(built.hash) / "python.json").write_text(
            json.dumps({"python": found[0], "python_version": found[1]})
        )

    def _copy_local(self, layer: Mapping[str, Any], fs: Path) -> None:
        spec, local = layer["spec"], layer["local"]
        entries = local_files(local["local_path"], local.get("ignore", ()), local.get("prefix", ""))
        if content_digest(entries) != spec["digest"]:
            raise StepFailed(
                f"the files under {local['local_path']} changed after the image was described; run again",
                [],
            )
        remote = spec["remote_path"]
        for rel, path in entries:
            dest = fs / (remote if rel == "" else f"{remote.rstrip('/')}/{rel}").lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if os.path.islink(path):
                os.symlink(os.readlink(path), dest)
            else:
                shutil.copy2(path, dest)

    async def _run_step(
        self,
        kind: str,
        spec: Mapping[str, Any],
        layer: Mapping[str, Any],
        chain: Sequence[str],
        cfg: dict[str, Any],
        build_dir: Path,
        log: Log,
    ) -> None:
        job = build_dir / "job"
        job.mkdir()
        binds: list[tuple[Path | str, str, bool]] = [(job, f"{KETCH_DIR}/job", True)]
        python = cfg.get("python") or "python3"
        if kind in ("pip_install", "uv_pip_install", "pip_install_from_requirements"):
            shutil.copy2(uv_binary(), job / "uv")
            argv = _uv_pip_argv(spec, python)
            if kind == "pip_install_from_requirements":
                (job / "requirements.txt").write_text(spec["requirements"])
                argv += ["-r", f"{KETCH_DIR}/job/requirements.txt"]
            else:
                argv += list(spec["packages"])
            cache = self.store.root / "uv-cache"
            cache.mkdir(exist_ok=True)
            binds.append((cache, f"{KETCH_DIR}/uv-cache", True))
            env = {
                "UV_CACHE_DIR": f"{KETCH_DIR}/uv-cache",
                "UV_LINK_MODE": "copy",
                "UV_NATIVE_TLS": "1",
            }
            commands = [argv]
        elif kind == "apt_install":
            packages = " ".join(shlex.quote(p) for p in spec["packages"])
            script = (
                f"apt-get {_apt_options()} update -q && apt-get {_apt_options()} install -y -q "
                f"--no-install-recommends {packages}; rc=$?; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; exit $rc"
            )
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            commands = [["/bin/sh", "-c", script]]
        elif kind == "run_commands":
            env = {}
            commands = [["/bin/sh", "-c", command] for command in spec["commands"]]
        elif kind == "run_function":
            (job / "fn.pkl").write_bytes(bytes(layer["blob"]))
            version = cfg.get("python_version") or ""
            if not version:
                raise StepFailed("run_function needs Python in the image", [])
            bundle = await self.bundles.ensure(version, log)
            binds.append((bundle, MOUNT_POINT, False))
            env = {
                "PYTHONPATH": MOUNT_POINT,
                "KETCH_BUNDLE_DEPS": f"{MOUNT_POINT}/deps",
                "PYTHONUNBUFFERED": "1",
            }
            commands = [[python, "-m", "ketch.guest.build_fn", f"{KETCH_DIR}/job/fn.pkl"]]
        else:
            raise StepFailed(f"unknown build step {kind!r}", [])
        lowers = [self.store.fs(h) for h in reversed(chain)]
        root = _Overlay(self.store, lowers, layer["hash"], self.userns, upper=build_dir / "fs")
        with root:
            await root.mount()
            for argv in commands:
                await self._sandbox(root.merged, argv, cfg, log, kind, binds=binds, env=env)
        root.forget_mount_points()
        if self.userns is not None:
            await asyncio.to_thread(restore_ids, build_dir / "fs")

    # -- processes -----------------------------------------------------------
    async def _sandbox(
        self,
        rootfs: Path,
        argv: Sequence[str],
        cfg: Mapping[str, Any],
        log: Log,
        what: str,
        binds: Sequence[tuple[Path | str, str, bool]] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        support = isolate.support()
        if not support.ok:
            raise StepFailed(f"cannot build images here: {support.reason}", [])
        workdir = str(cfg.get("workdir") or "/")
        with contextlib.ExitStack() as stack:
            stage = None
            userns.makedirs(self.userns, rootfs, workdir)
            if (
                self.userns is not None
            ):  # the root and the binds where the namespace's root reaches them, idmapped
                stage = stack.enter_context(self.userns.staging())
                rootfs = stage.expose(rootfs, writable=True, nosuid=False)
            box = isolate.Bwrap(
                rootfs, cwd=workdir
            )  # the network stays the host's: installs download
            self._fill_box(box, stage, cfg, binds, env)
            command = isolate.as_user(cfg.get("user"), argv)
            with box:
                full = box.argv(command)
                if self.userns is not None:
                    full = self.userns.enter(full)
                await self._stream(full, log, what, pass_fds=box.pass_fds)

    @staticmethod
    def _fill_box(
        box: isolate.Bwrap,
        stage: Staging | None,
        cfg: Mapping[str, Any],
        binds: Sequence[tuple[Path | str, str, bool]],
        env: Mapping[str, str] | None,
    ) -> None:
        """A build step's environment and binds (host paths through ``stage`` if given)."""

        def host(src: Path | str, writable: bool = False) -> Path | str:
            return stage.expose(Path(src), writable=writable) if stage is not None else src

        box.env.update({**cfg.get("env", {}), **(env or {})})
        if cfg.get("path"):
            box.env["PATH"] = str(cfg["path"])
        if os.path.exists("/etc/resolv.conf"):
            box.bind_ro(host(os.path.realpath("/etc/resolv.conf")), "/etc/resolv.conf")
        host_ca = _host_ca_bundle()
        if host_ca and any(dest.startswith(KETCH_DIR + "/") for _, dest, _ in binds):
            # Builds trust the host's CAs (a TLS-intercepting proxy's, say) for downloads.
            box.bind_ro(host(host_ca), f"{KETCH_DIR}/host-ca.crt")
            for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT"):
                box.env.setdefault(name, f"{KETCH_DIR}/host-ca.crt")
        for src, dest, writable in binds:
            (box.bind_rw if writable else box.bind_ro)(host(src, writable), dest)

    async def _stream(
        self,
        argv: Sequence[str],
        log: Log,
        what: str,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        assert proc.stdout is not None
        tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL)

        async def pump() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                tail.append(line)
                log(line)

        try:
            await asyncio.wait_for(asyncio.gather(pump(), proc.wait()), STEP_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise StepFailed(f"{what} exited with code {proc.returncode}", tail)

    async def prepare_bundle(self, built: BuiltImage, log: Log) -> Path:
        """The ketch bundle for the image's Python, compiled by that Python (once)."""
        version = built.python_version
        if not version or tuple(int(x) for x in version.split(".")) < (3, 11):
            raise ImageBuildError(
                f"image {built.hash[:12]} has Python {version or '(none)'}; ketch needs 3.11 or newer "
                "in the image"
            )
        try:
            bundle = await self.bundles.ensure(version, log)
        except RuntimeError as exc:
            raise ImageBuildError(str(exc)) from None
        if Bundles.needs_compile(bundle, version):
            with _Overlay(self.store, built.lowers, built.hash, self.userns) as root:
                await root.mount()
                argv = [built.python, "-m", "compileall", "-q", "-j", "0", MOUNT_POINT]
                try:
                    await self._sandbox(
                        root.merged,
                        argv,
                        built.config,
                        lambda _line: None,
                        "compileall",
                        binds=[(bundle, MOUNT_POINT, True)],
                    )
                except StepFailed as exc:
                    logger.warning("could not precompile the ketch bundle: %s", exc)
            Bundles.mark_compiled(bundle, version)
        return bundle


def _apt_options() -> str:
    """Options for apt-get in build steps: with a single-id mapping apt cannot drop to
    its ``_apt`` user (no such id, and setgroups is off), so it downloads as root."""
    mapping = rootless.current()
    return "-o APT::Sandbox::User=root" if mapping is not None and mapping.single_id else ""


def _host_ca_bundle() -> str | None:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return os.path.realpath(candidate)
    return None


class _Overlay:
    """An overlay of ``lowers`` with a throwaway (or given) upper dir, unmounted on exit.

    With a user namespace its layers are idmapped, and it is mounted where the
    namespace's root can reach it (a :class:`~ketch.worker.userns.Staging`).
    """

    def __init__(
        self,
        store: LayerStore,
        lowers: Sequence[Path],
        name: str,
        userns: UserNamespace | None = None,
        upper: Path | None = None,
    ) -> None:
        self.dir = store.new_build_dir("mnt-" + name)
        self.upper = upper or self.dir / "upper"
        self.userns = userns
        self.stage = userns.staging() if userns is not None else None
        self.merged = self.stage.mount_point() if self.stage is not None else self.dir / "merged"
        self.lowers = list(lowers)
        self._mounted = False
        self._created: list[str] = []

    async def mount(self) -> None:
        self.upper.mkdir(parents=True, exist_ok=True)
        await userns.mount_overlay(
            self.userns, self.lowers, self.upper, self.dir / "work", self.merged
        )
        self._mounted = True
        for point in (KETCH_DIR, "etc/resolv.conf"):
            if not os.path.lexists(self.merged / point.lstrip("/")):
                self._created.append(point.lstrip("/"))

    def forget_mount_points(self) -> None:
        """Remove the mount points bubblewrap created (after unmounting), so the layer has none."""
        for rel in self._created:
            target = self.upper / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()

    def __enter__(self) -> _Overlay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stage is not None:
            self.stage.close()  # the overlay with the rest
        elif self._mounted:
            isolate.unmount_sync(self.merged)
        remove_tree(self.dir)
