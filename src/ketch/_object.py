"""The client side of named durable objects: ``from_name``, ``ephemeral``, ``delete``.

A handle made by ``from_name`` is lazy: it is looked up (and created, with
``create_if_missing=True``) on first use, so module-level handles cost nothing
at import, in a container or on the client. Handles pickle by name or id, so
they can be passed to functions.

Example::

    d = ketch.Dict.from_name("cache", create_if_missing=True)
    with ketch.Queue.ephemeral() as q:
        q.put(1)
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, TypeVar

from . import _sync
from ._client import _Client
from .exception import AlreadyExistsError, InvalidError

ObjT = TypeVar("ObjT", bound="_Object")


class _Object:
    """Base of Dict, Queue, Secret and Volume handles."""

    _kind: ClassVar[str] = ""

    def __init__(
        self, name: str | None = None, object_id: str | None = None, create_if_missing: bool = False
    ) -> None:
        self._name = name
        self._object_id = object_id
        self._create_if_missing = create_if_missing

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name or self._object_id or '?'!r})"

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (type(self).__name__.lstrip("_"), self._name, self._object_id, self._create_if_missing),
        )

    @property
    def name(self) -> str | None:
        """The object's name (None for an ephemeral one)."""
        return self._name

    @property
    def object_id(self) -> str | None:
        """The object's id, once it has been looked up."""
        return self._object_id

    @classmethod
    def from_name(
        cls: type[ObjT],
        name: str,
        *,
        create_if_missing: bool = False,
        environment_name: str | None = None,
        client: Any = None,
        version: int | None = None,
    ) -> ObjT:
        """A handle to the object called ``name``, looked up on first use.

        ``environment_name`` and ``client`` are Modal's and change nothing here (one
        workspace, one client). ``version`` (Volumes: Modal's 1 or 2) is accepted; a ketch
        Volume is the same whichever is asked.

        Example: ``ketch.Dict.from_name("cache", create_if_missing=True)``
        """
        if version is not None and (cls._kind != "volume" or version not in (1, 2)):
            raise InvalidError(
                f"{cls.__name__.lstrip('_')}.from_name(version={version!r}): only a Volume "
                "takes a version, 1 or 2"
            )
        if not isinstance(name, str) or not name:
            raise InvalidError(f"{cls.__name__.lstrip('_')}.from_name needs a name, got {name!r}")
        return cls(name=name, create_if_missing=create_if_missing)

    @classmethod
    @_sync.context_manager
    @contextlib.asynccontextmanager
    async def ephemeral(cls: type[ObjT]) -> AsyncIterator[ObjT]:
        """A new unnamed object, deleted when the block ends.

        Example: ``with ketch.Dict.ephemeral() as d: d["k"] = 1``
        """
        client = await _Client.get()
        reply = await client.rpc("ObjectEphemeral", {"kind": cls._kind})
        obj = cls(object_id=reply["object_id"])
        try:
            yield obj
        finally:
            with contextlib.suppress(Exception):
                await client.rpc(
                    "ObjectDelete", {"kind": cls._kind, "object_id": reply["object_id"]}
                )

    @classmethod
    async def delete(cls, name: str, *, allow_missing: bool = False) -> None:
        """Delete the object called ``name`` and everything in it.

        Example: ``ketch.Queue.delete("jobs")``
        """
        client = await _Client.get()
        await client.rpc(
            "ObjectDelete", {"kind": cls._kind, "name": name, "allow_missing": allow_missing}
        )

    async def hydrate(self: ObjT) -> ObjT:
        """Look the object up now (handles are otherwise looked up on first use)."""
        await self._resolve()
        return self

    async def _resolve(self) -> str:
        if self._object_id is None:
            client = await _Client.get()
            reply = await client.rpc(
                "ObjectGet",
                {
                    "kind": self._kind,
                    "name": self._name,
                    "create_if_missing": self._create_if_missing,
                },
            )
            self._object_id = str(reply["object_id"])
        return self._object_id

    async def _rpc(
        self, method: str, body: dict[str, Any], timeout: float = 120.0
    ) -> dict[str, Any]:
        object_id = await self._resolve()
        client = await _Client.get()
        return await client.rpc(method, {**body, "object_id": object_id}, timeout=timeout)


class _ObjectManager:
    """``Dict.objects``, ``Queue.objects``, ``Volume.objects``: managing named objects of one
    kind, as Modal's ``objects`` namespaces do (``environment_name`` and ``client`` are
    accepted and change nothing: one workspace, one client)."""

    def __init__(self, impl: type[_Object]) -> None:
        self._impl = impl

    def __repr__(self) -> str:
        return f"{self._impl.__name__.lstrip('_')}.objects"

    async def create(
        self,
        name: str,
        *,
        allow_existing: bool = False,
        environment_name: str | None = None,
        client: Any = None,
    ) -> None:
        """Create the named object; one that exists is an ``AlreadyExistsError``, or with
        ``allow_existing=True`` left as it is.

        Example: ``ketch.Volume.objects.create("weights", allow_existing=True)``
        """
        client_ = await _Client.get()
        body = {"kind": self._impl._kind, "name": name}
        try:
            await client_.rpc("ObjectCreate", body)
        except AlreadyExistsError:
            if not allow_existing:
                raise

    async def list(
        self,
        *,
        max_objects: int | None = None,
        created_before: Any = None,
        environment_name: str | None = None,
        client: Any = None,
    ) -> builtins.list[Any]:
        """Handles to the named objects of this kind, newest first.

        Example: ``[d.name for d in ketch.Dict.objects.list()]``
        """
        if max_objects is not None and (not isinstance(max_objects, int) or max_objects < 0):
            raise InvalidError(f"max_objects must be a non-negative int, not {max_objects!r}")
        before = _timestamp(created_before)
        client_ = await _Client.get()
        rows = (await client_.rpc("ObjectList", {"kind": self._impl._kind}))["objects"]
        rows = [r for r in reversed(rows) if before is None or r["created_at"] < before]
        handles = [self._impl(name=r["name"], object_id=r["object_id"]) for r in rows]
        return handles[:max_objects] if max_objects is not None else handles

    async def delete(
        self,
        name: str,
        *,
        allow_missing: bool = False,
        environment_name: str | None = None,
        client: Any = None,
    ) -> None:
        """Delete the named object and everything in it (``allow_missing``: no error if
        there is none).

        Example: ``ketch.Queue.objects.delete("jobs", allow_missing=True)``
        """
        await self._impl.delete(name, allow_missing=allow_missing)


def _timestamp(value: Any) -> float | None:
    """``created_before``: a datetime (naive means UTC) or ``"now"``, as a Unix time."""
    if value is None:
        return None
    if value == "now":
        return time.time()
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return float(value.timestamp())
    raise InvalidError(f"created_before must be a datetime or 'now', not {value!r}")


ObjectManager: Any = _sync.synchronize_api(_ObjectManager, "ObjectManager")

_PUBLIC: dict[str, type] = {}


def public(impl: type, name: str, manager: type | None = None) -> Any:
    """Make the blocking public class of an object kind (and remember it for unpickling),
    with its ``objects`` namespace."""
    wrapper: Any = _sync.synchronize_api(impl, name)
    wrapper.objects = (manager or ObjectManager)(impl)
    _PUBLIC[name] = wrapper
    return wrapper


def _rebuild(name: str, object_name: str | None, object_id: str | None, create: bool) -> Any:
    return _PUBLIC[name](name=object_name, object_id=object_id, create_if_missing=create)
