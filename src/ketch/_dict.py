"""``ketch.Dict``: a durable, shared key-value store (Modal's ``modal.Dict``).

Keys and values are pickled with cloudpickle; keys are compared by their
pickled bytes. Entries live in the control plane's database and survive its
restart.

Example::

    d = ketch.Dict.from_name("cache", create_if_missing=True)
    d["model"] = {"version": 3}
    d.put("hits", 1)
    "model" in d, d.get("missing", default=0), len(d)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from ._object import _Object, public
from ._serialization import deserialize, serialize
from .exception import PayloadTooLargeError

MAX_ENTRY_BYTES = 64 * 1024 * 1024
_MISSING = object()


def _pack(key: Any, value: Any = None, with_value: bool = True) -> list[bytes]:
    k = serialize(key, "a Dict key")
    v = serialize(value, "a Dict value") if with_value else b""
    if len(k) + len(v) > MAX_ENTRY_BYTES:
        raise PayloadTooLargeError(
            f"a Dict entry is {len(k) + len(v)} bytes pickled; the limit is "
            f"{MAX_ENTRY_BYTES // 2**20} MiB per entry (put large data in a Volume)"
        )
    return [k, v]


class _Dict(_Object):
    """A named dict shared by every function and client of the control plane."""

    _kind = "dict"

    async def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """Set ``key`` to ``value``; with ``skip_if_exists`` keep an existing value. Returns whether it wrote."""
        reply = await self._rpc(
            "DictPut", {"items": [_pack(key, value)], "skip_if_exists": skip_if_exists}
        )
        return bool(reply["written"])

    async def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        reply = await self._rpc("DictGet", {"key": _pack(key, with_value=False)[0]})
        return deserialize(reply["value"]) if reply["found"] else default

    async def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (``KeyError`` if missing and no default)."""
        reply = await self._rpc("DictGet", {"key": _pack(key, with_value=False)[0], "pop": True})
        if reply["found"]:
            return deserialize(reply["value"])
        if default is _MISSING:
            raise KeyError(key)
        return default

    async def contains(self, key: Any) -> bool:
        reply = await self._rpc("DictGet", {"key": _pack(key, with_value=False)[0]})
        return bool(reply["found"])

    async def len(self) -> int:
        return int((await self._rpc("DictLen", {}))["len"])

    async def update(self, other: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> None:
        """Set many entries in one request. Example: ``d.update({"a": 1}, b=2)``."""
        items = [_pack(k, v) for k, v in {**dict(other or {}), **kwargs}.items()]
        if items:
            await self._rpc("DictPut", {"items": items})

    async def clear(self) -> None:
        """Remove every entry."""
        await self._rpc("DictClear", {})

    async def _scan(self) -> AsyncIterator[tuple[bytes, bytes]]:
        after = None
        while True:
            reply = await self._rpc("DictScan", {"after": after})
            for key, value in reply["items"]:
                yield key, value
                after = key
            if not reply["more"]:
                return

    async def keys(self) -> AsyncIterator[Any]:
        async for key, _ in self._scan():
            yield deserialize(key)

    async def values(self) -> AsyncIterator[Any]:
        async for _, value in self._scan():
            yield deserialize(value)

    async def items(self) -> AsyncIterator[tuple[Any, Any]]:
        async for key, value in self._scan():
            yield deserialize(key), deserialize(value)

    async def __getitem__(self, key: Any) -> Any:
        value = await self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    async def __setitem__(self, key: Any, value: Any) -> None:
        await self.put(key, value)

    async def __delitem__(self, key: Any) -> None:
        await self.pop(key)

    async def __contains__(self, key: Any) -> bool:
        return await self.contains(key)

    async def __len__(self) -> int:
        return await self.len()


Dict: Any = public(_Dict, "Dict")
