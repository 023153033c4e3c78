"""``import modal`` as ketch: Modal apps run unchanged under ketch's commands and in its
containers.

``install()`` puts a finder first on ``sys.meta_path`` that answers ``modal`` with
the ``ketch`` package and each public Modal submodule ketch has with its own
module (``modal.queue`` is ``ketch._queue``, ``modal.exception`` is
``ketch.exception``, ...). ``ketch run``, ``deploy``, ``serve`` and ``shell``
install it before importing the app's file, and every container before importing
its function's module.

Decided: under ketch's commands and in its containers the alias wins even where
the real ``modal`` package is installed (the app is being run by ketch; Modal's
client would try to reach Modal's servers). A Modal submodule ketch has no
counterpart for fails with a ``ModuleNotFoundError`` that says so. Plain
``python`` gets the alias only after ``ketch modal-alias install`` (see
``ketch._modal_boot``), and there the real package, where installed, wins.

Example::

    install()
    import modal  # ketch
    from modal.exception import NotFoundError  # ketch.exception.NotFoundError
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# Modal's public submodules and the ketch modules that hold the same names.
SUBMODULES = {
    "app": "ketch.app",
    "cls": "ketch.cls",
    "container_process": "ketch.sandbox",
    "dict": "ketch._dict",
    "exception": "ketch.exception",
    "experimental": "ketch.experimental",
    "file_io": "ketch.sandbox",
    "functions": "ketch.functions",
    "gpu": "ketch.gpu",
    "image": "ketch.image",
    "io_streams": "ketch.sandbox",
    "output": "ketch.output",
    "partial_function": "ketch.partial",
    "queue": "ketch._queue",
    "retries": "ketch.retries",
    "sandbox": "ketch.sandbox",
    "schedule": "ketch.schedule",
    "secret": "ketch._secret",
    "server": "ketch._server",
    "volume": "ketch._volume",
}


class _Loader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # (ketch's module, already imported)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "modal" and not fullname.startswith("modal."):
            return None
        if fullname == "modal":
            return importlib.machinery.ModuleSpec(fullname, _Loader("ketch"), is_package=True)
        name = fullname.removeprefix("modal.")
        found = SUBMODULES.get(name)
        if found is None:
            raise ModuleNotFoundError(
                f"ketch runs Modal apps as ketch, and has no counterpart of {fullname!r} "
                f"(it has modal.{', modal.'.join(sorted(SUBMODULES))})",
                name=fullname,
            )
        return importlib.machinery.ModuleSpec(fullname, _Loader(found))


_FINDER = _Finder()


def find_spec(fullname: str) -> importlib.machinery.ModuleSpec | None:
    """The alias's answer for ``fullname`` (for ``_modal_boot``, which plain Python loads)."""
    return _FINDER.find_spec(fullname)


def install() -> None:
    """Make ``import modal`` (and its public submodules) import ketch, from now on."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    real = sys.modules.get("modal")
    if real is not None and real is not sys.modules.get("ketch"):
        for key in [k for k in sys.modules if k == "modal" or k.startswith("modal.")]:
            del sys.modules[key]  # (an earlier import of the real package: ketch's from now on)
