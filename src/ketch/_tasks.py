"""Background tasks that are kept until they finish.

An event loop holds only weak references to its tasks, so a task that nobody
else references can be garbage-collected before it is done. ``spawn`` keeps a
reference until the task finishes, and logs a failure that would otherwise
surface only as "Task exception was never retrieved" when the process exits.

Example::

    spawn(self._start_container(pool, container_id), name=f"start {container_id}")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

_RUNNING: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """Run ``coro`` as a task of the running loop, referenced until it finishes."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _RUNNING.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _RUNNING.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=exc)
