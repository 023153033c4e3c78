"""How arguments, results and exceptions travel.

Arguments and results are cloudpickled. Payloads up to ``MAX_INLINE_BYTES``
ride inside API messages; larger ones go through the control plane's blob
store; anything above ``MAX_PAYLOAD_BYTES`` is refused at the client with
:class:`~ketch.exception.PayloadTooLargeError`.

Exceptions travel with their traceback (tblib), so the client re-raises the
same type with the remote frames in its traceback.
"""

from __future__ import annotations

import traceback
from typing import Any

import cloudpickle
import msgpack
from tblib import Traceback

from .exception import InvalidError, PayloadTooLargeError, RemoteError

MAX_INLINE_BYTES = 2 * 1024 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024


def _human(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def check_size(data: bytes, what: str) -> None:
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeError(
            f"{what} is {_human(len(data))} pickled; the most ketch carries is "
            f"{_human(MAX_PAYLOAD_BYTES)}. Pass large data through a Volume instead."
        )


def serialize(obj: Any, what: str = "value") -> bytes:
    """Pickle ``obj``; an object that cannot be pickled is an ``InvalidError``."""
    try:
        data: bytes = cloudpickle.dumps(obj)
    except Exception as exc:  # pickling can raise almost anything
        raise InvalidError(f"{what} could not be serialized: {type(exc).__name__}: {exc}") from exc
    check_size(data, what)
    return data


def deserialize(data: bytes) -> Any:
    return cloudpickle.loads(data)


def serialize_exception(exc: BaseException) -> bytes:
    """Pack an exception, its traceback and a printable form."""
    formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled: bytes | None = cloudpickle.dumps(exc)
        cloudpickle.loads(pickled)  # an exception that pickles but cannot be rebuilt is useless
    except Exception:
        pickled = None
    try:
        tb = Traceback(exc.__traceback__).to_dict() if exc.__traceback__ else None
    except Exception:
        tb = None
    packed: bytes = msgpack.packb(
        {
            "exc": pickled,
            "tb": tb,
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "repr": str(exc),
            "formatted": formatted,
        },
        use_bin_type=True,
    )
    return packed


def deserialize_exception(data: bytes) -> BaseException:
    """Rebuild an exception packed by :func:`serialize_exception`."""
    info = msgpack.unpackb(data, raw=False)
    exc: BaseException | None = None
    if info.get("exc") is not None:
        try:
            exc = cloudpickle.loads(info["exc"])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(
            f"{info['type']}: {info['repr']}\n\nRemote traceback:\n{info['formatted']}"
        )
    if info.get("tb"):
        try:
            exc = exc.with_traceback(Traceback.from_dict(info["tb"]).as_traceback())
        except Exception:
            pass
    exc.__ketch_remote_traceback__ = info["formatted"]  # type: ignore[attr-defined]
    return exc


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
