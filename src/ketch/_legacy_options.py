"""Decorator options of Modal's that ketch takes under another name, ignores with a
warning, or refuses with a reason, so a Modal app fails (or runs) for a stated cause.

- Renamed in Modal (older apps still use them): ``keep_warm`` is ``min_containers``,
  ``concurrency_limit`` is ``max_containers``, ``container_idle_timeout`` is
  ``scaledown_window``, ``allow_concurrent_inputs=N`` is ``@ketch.concurrent(max_inputs=N)``.
- Placement and platform hints with no meaning on one's own machines (``region``,
  ``cloud``, ``nonpreemptible``, ``i6pn``, ``experimental_options``, ``_experimental_*``):
  accepted; the ones that would change where a container runs print a warning.
- ``enable_memory_snapshot``: accepted; containers start without a snapshot (every
  ``@enter`` hook runs in each), which changes start time, not behaviour.
- ``include_source``: ketch always sends the app's source; ``False`` prints a warning.
- ``is_generator``: whether the function is a generator, when detection cannot tell.
- Refused with the reason: ``max_inputs`` / ``single_use_containers`` (a container
  per input), ``restrict_modal_access``, ``network_file_systems``, ``proxy``.
"""

from __future__ import annotations

import warnings
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
IGNORED = {"nonpreemptible", "i6pn", "experimental_options", "enable_memory_snapshot"}
REFUSED = {
    "max_inputs": "a container that exits after N inputs is not supported yet",
    "single_use_containers": "a container per input is not supported yet",
    "restrict_modal_access": "containers without access to the control plane are not supported yet",
    "network_file_systems": "NetworkFileSystem is not in ketch: use a Volume (volumes=)",
    "proxy": "static-IP proxies do not exist here (containers use the host's network)",
}


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


def _take(
    decorator: str, key: str, value: Any, named: dict[str, Any], extra: dict[str, Any]
) -> bool:
    """Apply one Modal-only option; False if Modal has no such option either."""
    if key in RENAMED:
        if value is not None:
            named[RENAMED[key]] = value
    elif key in WARNED:
        if value is not None:
            warnings.warn(WARNED[key], stacklevel=6)
    elif key == "include_source":
        if value is False:
            warnings.warn(
                "ketch always sends the app's source; include_source=False is ignored",
                stacklevel=6,
            )
    elif key in ("is_generator", "allow_concurrent_inputs"):
        if value is not None:
            extra[key] = value
    elif key in REFUSED:
        if value not in (None, False, {}, ()):
            raise InvalidError(f"@{decorator}({key}=...): {REFUSED[key]}")
    else:
        return key in IGNORED or key.startswith("_experimental")
    return True
