"""What an image build step takes from this machine, and the digests that hash it.

Local paths are checked, directories walked with dockerignore-style patterns,
file contents digested (so editing a copied file changes the layer hash), Python
modules located without importing them, and ``run_function`` callables pickled
by value. ``ketch.image`` turns the results into layers and mounts.

Example::

    entries = local_files("/src/app", ignore=["**/__pycache__"])
    content_digest(entries)  # 'sha256:...'
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import posixpath
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FunctionType
from typing import TYPE_CHECKING, Any

import cloudpickle

from ._config import in_container
from .exception import InvalidError

if TYPE_CHECKING:
    from pathspec import Pattern

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_pickle_lock = threading.Lock()


def container_path(path: str | os.PathLike[str], what: str) -> str:
    """``path`` normalised as an absolute container path, keeping a trailing ``/``."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text.startswith("/"):
        raise InvalidError(f"{what} must be an absolute path in the container, got {path!r}")
    return posixpath.normpath(text) + ("/" if text.endswith("/") and text != "/" else "")


def existing_local_path(path: str | os.PathLike[str], what: str, want: str) -> Path:
    """``path`` made absolute, checked to be an existing ``want`` (``dir`` or ``file``)."""
    local = Path(path).expanduser().absolute()
    if in_container():
        return local
    ok = local.is_dir() if want == "dir" else local.is_file()
    if not ok:
        state = "does not exist" if not local.exists() else f"is not a {want}"
        raise InvalidError(f"{what}: local path {os.fspath(path)!r} {state}")
    return local


def find_module_source(name: str) -> tuple[Path, bool]:
    """The source file or package directory of ``name``, found without importing it."""
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        raise InvalidError(
            f"add_local_python_source takes module names like 'my_pkg', got {name!r}"
        )
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    for part in rest:
        locations = list(spec.submodule_search_locations or []) if spec else []
        spec = importlib.machinery.PathFinder.find_spec(part, locations) if locations else None
    if spec is None:
        raise InvalidError(f"add_local_python_source: no module named {name!r} on sys.path")
    locations = list(spec.submodule_search_locations or [])
    if len(locations) > 1:
        raise InvalidError(
            f"add_local_python_source: {name!r} is a namespace package in several directories"
        )
    if locations:
        return Path(locations[0]), True
    if spec.origin and spec.has_location and spec.origin.endswith(".py"):
        return Path(spec.origin), False
    raise InvalidError(
        f"add_local_python_source: {name!r} is not Python source (built-in or compiled)"
    )


def pickle_function(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle ``fn`` by value so the build needs none of the caller's modules."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if not isinstance(fn, FunctionType) or module is None or module.__name__ == "__main__":
        module = None  # __main__ is pickled by value anyway; other callables keep the defaults
    with _pickle_lock:
        register = (
            module is not None
            and module.__name__ not in cloudpickle.list_registry_pickle_by_value()
        )
        if register:
            cloudpickle.register_pickle_by_value(module)
        try:
            pickled: bytes = cloudpickle.dumps((fn, args, kwargs))
            return pickled
        except Exception as exc:
            raise InvalidError(
                f"run_function: cannot pickle {fn!r} with its arguments: {exc}"
            ) from exc
        finally:
            if register:
                cloudpickle.unregister_pickle_by_value(module)


def _ignore_rules(patterns: Sequence[str]) -> list[Pattern]:
    """Compile ``.dockerignore`` patterns with pathspec, read the way Docker reads them.

    Docker cleans each pattern and matches it from the context root, so
    ``*.log`` is only the root's logs (git would match it at any depth):
    every pattern is anchored with a leading ``/`` before pathspec sees it.
    Inside a container nothing is compiled: the client applied the patterns
    already, and pathspec is a client-side dependency.
    """
    for raw in patterns:
        if not isinstance(raw, str):
            raise InvalidError(f"ignore patterns must be strings, got {raw!r}")
    if in_container():
        return []
    from pathspec import lookup_pattern

    compile_pattern = lookup_pattern("gitignore")
    rules = []
    for raw in patterns:
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        # Cleaned as Docker cleans it; "." and "/" name nothing.
        body = posixpath.normpath("/" + (text[1:].strip() if negate else text)).lstrip("/")
        if not body:
            continue
        try:
            rules.append(compile_pattern(("!/" if negate else "/") + body))
        except (ValueError, re.error) as exc:
            raise InvalidError(f"ignore pattern {raw!r} is not valid: {exc}") from None
    return rules


def _is_ignored(rel: str, rules: list[Pattern]) -> bool:
    """Docker's rule: a pattern applies to a path it or one of its parents matches; the last wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for rule in rules:
        if any(rule.match_file(p) is not None for p in prefixes):
            ignored = bool(rule.include)
    return ignored


def local_files(
    local_path: str, ignore: Sequence[str] = (), prefix: str = ""
) -> list[tuple[str, str]]:
    """The ``(relative path, absolute path)`` files a local step or mount covers, sorted.

    A file yields one entry with relative path ``""``. Patterns apply to
    ``prefix + relative path`` (the prefix places a Dockerfile ``COPY`` source
    inside its build context). Symlinks are listed, not followed.

    Example::

        local_files("/src/app", ignore=["**/__pycache__"])  # [('main.py', '/src/app/main.py')]
    """
    if not os.path.isdir(local_path) or os.path.islink(local_path):
        return [("", local_path)]
    rules = _ignore_rules(ignore)
    can_prune = all(rule.include for rule in rules)
    out = []
    for top, dirs, files in os.walk(local_path):
        rel_top = os.path.relpath(top, local_path).replace(os.sep, "/")
        rel_top = "" if rel_top == "." else rel_top + "/"
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        dirs[:] = [
            d
            for d in dirs
            if d not in links and not (can_prune and _is_ignored(prefix + rel_top + d, rules))
        ]
        for name in files + links:
            if not _is_ignored(prefix + rel_top + name, rules):
                out.append((rel_top + name, os.path.join(top, name)))
    return sorted(out)


def content_digest(entries: list[tuple[str, str]]) -> str:
    """sha256 over each entry's relative path, kind, mode and content hash."""
    outer = hashlib.sha256()
    for rel, path in entries:
        st = os.lstat(path)
        inner = hashlib.sha256()
        if os.path.islink(path):
            kind, mode = "l", 0
            inner.update(os.readlink(path).encode())
        else:
            kind, mode = "f", st.st_mode & 0o7777
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    inner.update(chunk)
        outer.update(f"{kind}\0{rel}\0{mode:o}\0{inner.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()


def context_matches(context: Path, source: str, ignore: tuple[str, ...], line: int) -> list[Path]:
    """The paths a Dockerfile ``COPY`` source names in the build context, less ignored ones."""
    rel = posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."
    where = f"Dockerfile line {line}: COPY source {source!r}"
    if rel == ".." or rel.startswith("../"):
        raise InvalidError(f"{where} is outside the build context")
    if any(c in rel for c in "*?["):
        found = sorted(context.glob(rel))
    else:
        found = [context / rel] if (context / rel).exists() or (context / rel).is_symlink() else []
    rules = _ignore_rules(ignore)
    found = [
        p
        for p in found
        if p == context or not _is_ignored(p.relative_to(context).as_posix(), rules)
    ]
    if not found:
        raise InvalidError(f"{where} not found in {str(context)!r} (or excluded by .dockerignore)")
    return found


def ignore_patterns(ignore: Sequence[str], what: str) -> tuple[str, ...]:
    """``ignore`` as a tuple, once every pattern is known to compile."""
    if isinstance(ignore, str) or not isinstance(ignore, list | tuple):
        raise InvalidError(f"{what}: ignore must be a list of patterns, got {ignore!r}")
    _ignore_rules(ignore)
    return tuple(ignore)


def read_dockerignore(context: Path) -> tuple[str, ...]:
    """The patterns of ``context/.dockerignore``, or none if there is no such file."""
    ignore_file = context / ".dockerignore"
    return (
        tuple(ignore_file.read_text(encoding="utf-8").splitlines()) if ignore_file.is_file() else ()
    )
