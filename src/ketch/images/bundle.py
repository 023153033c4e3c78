"""The ketch bundle that is bound read-only into every sandbox container.

Users never add ketch to their image. For each Python version an image uses,
the machine keeps ``<cache>/bundles/py<version>-<digest>/`` with a copy of the
``ketch`` package and, under ``deps/``, the packages the container side needs
(cloudpickle, msgpack, tblib, aiohttp), installed with uv for that Python
version at the versions this machine runs, and compiled to bytecode by the
image's own interpreter on first use. The digest covers ketch's source and
those versions, so editing ketch makes a new bundle.

Inside the container the bundle is ``/.ketch/bundle``: ``PYTHONPATH`` names
it, and ``KETCH_BUNDLE_DEPS`` makes ``import ketch`` append ``deps/`` to the
*end* of ``sys.path``, so packages the user installed win over ketch's copies.

Example::

    bundle = await Bundles(cache).ensure("3.11", log)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

import ketch

from .layers import LayerStore, remove_tree

PACKAGES = ("cloudpickle", "msgpack", "tblib", "aiohttp")
MOUNT_POINT = "/.ketch/bundle"
DEPS_MOUNT_POINT = MOUNT_POINT + "/deps"


def uv_binary() -> str:
    """The uv executable shipped with ketch's ``uv`` dependency (or one on PATH)."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise RuntimeError("uv is not installed; reinstall ketch (it depends on uv)") from None
        return found


def _pins() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in PACKAGES]


@functools.cache
def _source_digest() -> str:
    root = Path(ketch.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for pin in _pins():
        digest.update(pin.encode() + b"\n")
    return digest.hexdigest()


def python_platform() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{arch}-manylinux_2_28"


class Bundles:
    """Makes (once) and finds the ketch bundle for a Python version."""

    def __init__(self, store: LayerStore) -> None:
        self.store = store
        self.root = store.root / "bundles"
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, python_version: str) -> Path:
        return self.root / f"py{python_version}-{_source_digest()[:16]}"

    async def ensure(self, python_version: str, log: Callable[[str], None]) -> Path:
        """The bundle for ``python_version``, installing its dependencies if it is new."""
        target = self.path(python_version)
        if (target / "deps").is_dir():
            return target
        async with self._locks.setdefault(python_version, asyncio.Lock()):
            async with self.store.alock(target.name):
                if not (target / "deps").is_dir():
                    await self._make(python_version, target, log)
        return target

    async def _make(self, python_version: str, target: Path, log: Callable[[str], None]) -> None:
        log(f"preparing the ketch bundle for Python {python_version}")
        staging = self.store.new_build_dir("bundle-" + target.name)
        try:
            shutil.copytree(
                Path(ketch.__file__).parent,
                staging / "ketch",
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
            argv = [
                uv_binary(),
                "pip",
                "install",
                "--quiet",
                "--target",
                str(staging / "deps"),
                "--python-version",
                python_version,
                "--python-platform",
                python_platform(),
                *_pins(),
            ]
            env = {
                "UV_NATIVE_TLS": "1",
                **os.environ,
                "UV_CACHE_DIR": str(self.store.root / "uv-cache"),
            }
            first = b""
            for attempt in (argv, [*argv, "--offline"]):  # no index: what an earlier bundle cached
                proc = await asyncio.create_subprocess_exec(
                    *attempt,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                )
                out, _ = await proc.communicate()
                if proc.returncode == 0:
                    break
                first = first or out
            if proc.returncode != 0:
                raise RuntimeError(
                    f"installing the ketch bundle's packages for Python {python_version} failed:\n"
                    + first.decode(errors="replace")[-4000:]
                )
            if target.exists():
                remove_tree(target)
            os.rename(staging, target)
        finally:
            remove_tree(staging)

    @staticmethod
    def needs_compile(bundle: Path, python_version: str) -> bool:
        return not (bundle / f".compiled-{python_version}").exists()

    @staticmethod
    def mark_compiled(bundle: Path, python_version: str) -> None:
        (bundle / f".compiled-{python_version}").touch()
