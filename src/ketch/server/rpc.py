"""The table of RPC handlers, filled by the ``@rpc`` decorator where each handler is defined.

A handler is a module-level function named after its method (``DictPut``
answers ``POST /rpc/DictPut``). It takes ``(api, body)``, or ``(api, body,
caller)`` when it must scope what it does to the caller, and returns its
reply or an awaitable of it. ``api`` imports every module that defines
handlers, so the table is complete once ``ketch.server.api`` is imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

Reply = dict[str, Any]
# Plain functions answer at once (or return an awaitable when they must wait: a blocking
# Queue get); coroutine functions are awaited. Two arities, hence ``...``.
Handler = Callable[..., Reply | Awaitable[Reply]]
H = TypeVar("H", bound=Handler)

HANDLERS: dict[str, Handler] = {}
WANTS_CALLER: set[str] = set()  # methods whose handler takes the caller as a third argument


def rpc(fn: H) -> H:
    """Register ``fn`` as the handler of the RPC named ``fn.__name__``; ``fn`` is unchanged."""
    HANDLERS[fn.__name__] = fn
    if len(inspect.signature(fn).parameters) == 3:
        WANTS_CALLER.add(fn.__name__)
    return fn
