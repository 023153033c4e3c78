"""Decorator options of Modal's that ketch takes under another name, ignores with a
warning, or refuses with a reason, so a Modal app fails (or runs) for a stated cause.

- Renamed in Modal (older apps still use them): ``keep_warm`` is ``min_containers``,
  ``concurrency_limit`` is ``max_containers``, ``container_idle_timeout`` is
  ``scaledown_window``, ``allow_concurrent_inputs=N`` is ``@ketch.concurrent(max_inputs=N)``.
- Placement and platform hints with no meaning on one's own machines (``region``,
  ``cloud``, ``nonpreemptible``, ``i6pn``, ``experimental_options``, ``_experimental_*``):
  accepted; the ones that would change where a container runs print a warning.
- ``enable_memory_snapshot=True``: the module's import and the ``@enter(snap=True)``
  hooks run once, in the function's fork template; containers fork from that state
  (``docs/snapshots.md``).
- ``include_source``: ketch always sends the app's source; ``False`` prints a warning.
- ``is_generator``: whether the function is a generator, when detection cannot tell.
- ``max_inputs=N`` / ``single_use_containers=True``: a container takes N inputs (one) in
  its life, then drains and stops; others start for the rest.
- ``restrict_modal_access=True``: the container's token reaches no RPC; its inputs and
  outputs still flow over its channel.
- Refused with the reason: ``network_file_systems``, ``proxy``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .exception import InvalidError

RENAMED = {
    "keep_warm": "min_containers",
    "concurrency_limit": "max_containers",
    "container_idle_timeout": "scaledown_window",
}
WARNED = {
    "region": "ketch runs containers on its own machines; region= is ignored",
    "cloud": "ketch runs containers on its own machines; cloud= is ignored",
}
IGNORED = {"nonpreemptible", "i6pn", "experimental_options"}
REFUSED = {
    "network_file_systems": "NetworkFileSystem is not in ketch: use a Volume (volumes=)",
    "proxy": "static-IP proxies do not exist here (containers use the host's network)",
}


def _lifetime(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
        raise InvalidError(f"max_inputs must be an int between 1 and 1000000, got {value!r}")
    return value


def translate(decorator: str, given: dict[str, Any], named: dict[str, Any]) -> dict[str, Any]:
    """``named`` (the decorator's own options) updated from Modal-only ``given`` ones.

    Returns the extra settings: ``is_generator`` and ``allow_concurrent_inputs`` when given.
    Anything unknown to both Modal and ketch is an ``InvalidError`` naming it.
    """
    extra: dict[str, Any] = {}
    unknown = sorted(k for k, v in given.items() if not _take(decorator, k, v, named, extra))
    if unknown:
        raise InvalidError(f"unknown option(s) for @{decorator}(): {', '.join(unknown)}")
    return extra


# Options kept for the decorator to apply: key -> (setting, value) or None (nothing to do).
EXTRA: dict[str, Callable[[Any], tuple[str, Any] | None]] = {
    "is_generator": lambda v: None if v is None else ("is_generator", v),
    "allow_concurrent_inputs": lambda v: None if v is None else ("allow_concurrent_inputs", v),
    "max_inputs": lambda v: None if v is None else ("container_max_inputs", _lifetime(v)),
    "single_use_containers": lambda v: ("container_max_inputs", 1) if v else None,
    "restrict_modal_access": lambda v: ("restrict_modal_access", True) if v else None,
    "enable_memory_snapshot": lambda v: ("memory_snapshot", True) if v else None,
}


def _take(
    decorator: str, key: str, value: Any, named: dict[str, Any], extra: dict[str, Any]
) -> bool:
    """Apply one Modal-only option; False if Modal has no such option either."""
    if key in RENAMED:
        if value is not None:
            named[RENAMED[key]] = value
    elif key in EXTRA:
        setting = EXTRA[key](value)
        if setting is not None:
            extra[setting[0]] = setting[1]
    elif key in WARNED or key == "include_source":
        message = WARNED.get(
            key, "ketch always sends the app's source; include_source=False is ignored"
        )
        if (value is not None and key != "include_source") or value is False:
            warnings.warn(message, stacklevel=6)
    elif key in REFUSED:
        if value not in (None, False, {}, ()):
            raise InvalidError(f"@{decorator}({key}=...): {REFUSED[key]}")
    else:
        return key in IGNORED or key.startswith("_experimental")
    return True
