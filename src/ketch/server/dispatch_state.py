"""What the dispatcher keeps about calls, inputs, pools and containers (``dispatcher.py``).

Plain records: the dispatcher, its queue window (``queue_window.py``) and its
gangs (``gangs.py``) read and change them; none of them does I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._spec import FunctionSpec

if TYPE_CHECKING:
    from .web import Exchange

KEEP_IN_MEMORY_BYTES = 64 * 1024


@dataclass
class CallState:
    id: str
    function_id: str
    app_id: str
    pool_key: str
    kind: str
    n_inputs: int | None
    n_final: int
    method: str | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    creator_app: str | None = None  # the app whose container made the call (None: a client)

    def wake(self) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()

    @property
    def done(self) -> bool:
        return self.n_inputs is not None and self.n_final >= self.n_inputs


@dataclass(slots=True)  # one per queued input: no __dict__ each (1,000,000 of them queue)
class InputState:
    id: int
    call_id: str
    idx: int
    pool_key: str
    method: str | None
    args: bytes | None  # kept in memory while small; None means read it back when sent
    blob_id: str | None = None
    # A web request (``web.Exchange``): in memory only, never in the store; the container
    # it went to, for its disconnect.
    web: Exchange | None = None
    web_request: dict[str, Any] | None = None
    container_id: str | None = None
    web_pending: list[dict[str, Any]] | None = None  # for the container, once it has one
    # When it joined the pool's window (monotonic): its queue time once sent (for one read
    # back from the store, when it came back into memory).
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class PoolInfo:
    function_id: str
    app_id: str
    spec: FunctionSpec
    params: bytes | None


@dataclass
class ContainerHandle:
    id: str
    pool_key: str
    token: str
    writer: asyncio.StreamWriter | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # Asked to stop before it could be told to (no channel yet): it is stopped as soon
    # as its worker has it, or not started at all.
    stop_requested: bool = False
    started_at: float = field(default_factory=time.time)
    # A gang (``clustered``): its leader (rank 0) is the one container the scheduler
    # knows; it lists every member in rank order, and each other member names it.
    gang: list[str] | None = None
    leader: str | None = None
    ready: bool = False  # said "ready" (a gang is ready when every member is)
    gang_failure: str | None = None  # why a member ended the gang
    last_call: str | None = None  # the call its latest output answered (for its log lines)


def pool_key_for(function_id: str, params: bytes | None) -> str:
    if not params:
        return function_id
    return f"{function_id}:{hashlib.sha256(params).hexdigest()[:16]}"


def keep_in_memory(args: bytes | None) -> bytes | None:
    """Small arguments stay in memory; larger ones are read back from the store when sent."""
    return args if args is not None and len(args) <= KEEP_IN_MEMORY_BYTES else None
