"""The container's outbox: outputs are batched for a moment, never held for long."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ketch._spec import FunctionSpec
from ketch.guest.loop import FLUSH_AFTER_S, ContainerLoop

pytestmark = pytest.mark.timeout(30)


class RecordingChannel:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def write(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


def test_an_output_is_sent_soon_even_when_the_next_input_runs_long():
    """Regression: with inputs still queued, a result waited for the next output, which a
    slow next input (or one waiting on the caller) could hold back for good."""
    chan = RecordingChannel()
    loop = ContainerLoop(chan, None, FunctionSpec(tag="f", module_name="m", qualname="f"))  # type: ignore[arg-type]
    threading.Thread(target=loop._flusher, daemon=True).start()
    loop.queue.append({"id": 2})  # another input is waiting: the output may be batched
    loop.emit({"id": 1, "status": "success"})
    deadline = time.monotonic() + 5
    while not chan.sent and time.monotonic() < deadline:
        time.sleep(FLUSH_AFTER_S)
    assert chan.sent == [{"t": "outputs", "items": [{"id": 1, "status": "success"}]}]
