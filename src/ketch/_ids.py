"""Prefixed object ids, as Modal has them (``ap-…``, ``fu-…``, ``fc-…``, ``ta-…``)."""

from __future__ import annotations

import hashlib
import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(10)}"


def stable_id(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]
    return f"{prefix}-{digest}"
