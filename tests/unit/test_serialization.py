"""Arguments, results and exceptions across the wire."""

from __future__ import annotations

import threading
import traceback

import pytest

from ketch import _serialization as ser
from ketch.exception import InvalidError, PayloadTooLargeError, RemoteError


def _raise_value_error():
    raise ValueError("remote problem")


def test_exception_keeps_type_and_traceback():
    try:
        _raise_value_error()
    except ValueError as exc:
        data = ser.serialize_exception(exc)
    rebuilt = ser.deserialize_exception(data)
    assert type(rebuilt) is ValueError and str(rebuilt) == "remote problem"
    text = "".join(traceback.format_exception(rebuilt))
    assert "_raise_value_error" in text


class Unpicklable(Exception):
    def __init__(self, lock):
        super().__init__("has a lock")
        self.lock = lock


def test_unpicklable_exception_becomes_remote_error():
    exc = Unpicklable(threading.Lock())
    rebuilt = ser.deserialize_exception(ser.serialize_exception(exc))
    assert isinstance(rebuilt, RemoteError)
    assert "has a lock" in str(rebuilt)


def test_unpicklable_argument_is_invalid_error():
    with pytest.raises(InvalidError, match="could not be serialized"):
        ser.serialize(threading.Lock(), "an argument")


def test_payload_limit(monkeypatch):
    monkeypatch.setattr(ser, "MAX_PAYLOAD_BYTES", 1000)
    with pytest.raises(PayloadTooLargeError, match="Volume"):
        ser.serialize(b"x" * 5000, "an argument")
