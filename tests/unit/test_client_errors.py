"""An error the control plane answers with reaches the caller at once, whatever its type.

The client retries what looks like a lost connection (``OSError``, ``TimeoutError``);
a typed error that is also a builtin ``OSError`` (``CallTimeoutError`` is a
``TimeoutError``) must not be taken for one and retried until ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ketch import _client
from ketch.exception import CallTimeoutError, NotFoundError

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("name", "cls"), [("CallTimeoutError", CallTimeoutError), ("NotFoundError", NotFoundError)]
)
def test_a_typed_error_from_the_server_is_raised_not_retried(monkeypatch, name, cls):
    calls = []

    async def answer(self, url, request):
        calls.append(url)
        return 404, {"error": {"type": name, "message": "as the server said"}}

    monkeypatch.setattr(_client._Client, "_call", answer)
    monkeypatch.setattr(_client._sync, "blocking_allowed", lambda: False)
    client = _client._Client()
    client._url = "http://127.0.0.1:1"
    started = time.monotonic()
    with pytest.raises(cls, match="as the server said"):
        asyncio.run(client.rpc("Status", {}))
    assert len(calls) == 1 and time.monotonic() - started < 5
