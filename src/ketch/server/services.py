"""What the dispatcher drives, as typed interfaces, and the one object that wires them.

The dispatcher performs the scheduler's actions through these: a ``Worker``
starts and stops containers on this node, ``ContainerVolumes`` gives them
their Volumes' working copies, a ``Gateway`` serves web endpoints, ``Schedules``
fires scheduled runs, and ``Builds`` builds images. ``main`` makes the real
ones; unit tests give the dispatcher fakes (``tests/unit/test_dispatcher.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._spec import FunctionSpec
    from ..images.builder import Builder
    from .builds import BuildJob


class Worker(Protocol):
    """Runs containers on one node (``worker/local.py``, ``worker/bubblewrap.py``).

    ``start`` returns once the container's process runs; its output and its
    exit come back through the sinks the worker was made with (``LogSink`` and
    ``ExitSink`` of ``worker/local.py``: the dispatcher's ``container_log`` and
    ``container_exited``).
    """

    @property
    def name(self) -> str: ...  # the runtime: "local" or "sandbox"

    @property
    def isolation(self) -> str: ...  # what isolates containers, in words

    @property
    def enforces_read_only(self) -> bool: ...  # read-only Volume mounts are read-only

    async def start(
        self,
        container_id: str,
        env: dict[str, str],
        spec: FunctionSpec,
        mounts: Sequence[tuple[str, str, bool]] = (),
    ) -> None: ...

    def terminate(self, container_id: str, grace: float) -> None: ...

    def kill(self, container_id: str) -> None: ...

    def running(self) -> int: ...

    async def shutdown(self, grace: float = 5.0) -> None: ...

    def unenforced(self, spec: FunctionSpec) -> list[str]: ...  # "X is not enforced: why"


class ContainerVolumes(Protocol):
    """Volumes as containers see them: working copies made at start, committed at exit."""

    async def prepare(
        self, container_id: str, mounts: list[dict[str, Any]], enforces_read_only: bool = False
    ) -> list[tuple[str, str, bool]]: ...

    def release(self, container_id: str) -> None: ...

    async def settle(self, container_ids: list[str], timeout: float) -> None: ...

    async def close(self) -> None: ...


class Gateway(Protocol):
    """Serves the web endpoints of running apps on loopback."""

    async def publish(
        self, app_id: str, app_name: str, deployed: bool, functions: list[dict[str, Any]]
    ) -> dict[str, str]: ...

    async def unpublish(self, app_id: str) -> None: ...

    def urls(self, app_id: str) -> dict[str, str]: ...

    async def close(self) -> None: ...


class Schedules(Protocol):
    """Fires the schedules of deployed apps' functions."""

    def sync(self, app_id: str, functions: list[dict[str, Any]]) -> None: ...

    def describe(self, app_id: str) -> list[dict[str, Any]]: ...

    def next_runs(self) -> dict[str, float]: ...

    async def close(self) -> None: ...


class Builds(Protocol):
    """Builds images on the control plane (only where the runtime applies them)."""

    @property
    def builder(self) -> Builder: ...

    def start(self, wire: dict[str, Any], force: str) -> BuildJob: ...

    def remember(self, wire: dict[str, Any]) -> None: ...

    def recall(self, image_id: str) -> dict[str, Any]: ...

    async def status(self, build_id: str, offset: int, wait: float) -> dict[str, Any]: ...


@dataclass
class Services:
    """The dispatcher's collaborators. Only the worker is always there."""

    worker: Worker
    volumes: ContainerVolumes | None = None
    builds: Builds | None = None
    gateway: Gateway | None = None
    schedules: Schedules | None = None
