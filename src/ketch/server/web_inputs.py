"""HTTP requests to web endpoints as the dispatcher queues them (``server/web.py`` calls).

A request is an input with a negative id that is never stored: it waits in the
function's pool like any other, its events (the response, WebSocket frames) go
to its ``web.Exchange``, and what the client sends later (frames, a disconnect)
follows it to the container that took it, or waits for one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .dispatch_state import InputState

if TYPE_CHECKING:
    from .dispatcher import Dispatcher
    from .web import Exchange


def request(
    d: Dispatcher,
    function_id: str,
    method: str | None,
    exchange: Exchange,
    scope: dict[str, Any],
    body: bytes,
) -> int:
    """Queue an HTTP request for the function's containers; its events go to ``exchange``."""
    d._callable(function_id)
    key = d._ensure_pool(function_id, None)
    input_id = next(d._web_ids)
    d.inputs[input_id] = InputState(
        input_id,
        "",
        0,
        key,
        method,
        None,
        web=exchange,
        web_request={"scope": scope, "body": body},
    )
    pool = d.pools[key]
    d._perform(pool, pool.enqueue([input_id], time.monotonic()))
    return input_id


def send(d: Dispatcher, input_id: int, msg: dict[str, Any]) -> None:
    """A message for the container serving web input ``input_id`` (a WebSocket frame, a
    disconnect)."""
    info = d.inputs.get(input_id)
    if info is None:
        return
    if info.container_id is None:
        if info.web_pending is None:
            info.web_pending = []
        info.web_pending.append(msg)
    else:
        d._send(info.container_id, {"t": "web_in", "id": input_id, **msg})


def cancel(d: Dispatcher, input_id: int) -> None:
    """The client of a web request went away: stop running it."""
    info = d.inputs.get(input_id)
    pool = d.pools.get(info.pool_key) if info else None
    if info is not None and pool is not None:
        d._perform(pool, pool.cancel([input_id], time.monotonic()))


def done(d: Dispatcher, input_id: int, status: str, data: bytes | None) -> None:
    """The request's input ended: its exchange gets the outcome."""
    info = d.inputs.pop(input_id, None)
    if info is not None and info.web is not None:
        info.web.done(status, data)
