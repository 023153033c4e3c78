"""Gangs (``@ketch.experimental.clustered``) as the dispatcher runs them.

One ``StartContainer`` of a clustered pool starts N containers: ``ta-X`` (rank
0, the leader, the only one the scheduler knows) and ``ta-X-1`` ... The
dispatcher sends every input to all members, holds the leader's readiness
until every member is ready, ignores the other members' outputs (the result
is rank 0's), and when one member ends stops the rest at once, so that the
leader's exit fails (or retries) the input whole, with the member's reason.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import scheduler as sm

if TYPE_CHECKING:
    from .dispatch_state import ContainerHandle
    from .dispatcher import Dispatcher


def member_ids(leader: str, size: int) -> list[str]:
    """The containers of a gang of ``size`` led by ``leader``, in rank order."""
    return [leader] + [f"{leader}-{rank}" for rank in range(1, size)]


def member_env(ids: list[str], rank: int) -> dict[str, str]:
    """What ``get_cluster_info()`` reads in member ``rank``; on one machine every member's
    address is loopback (a cluster's worker puts the nodes' addresses in instead)."""
    info = {"id": ids[0], "ids": ids, "ips": ["127.0.0.1"] * len(ids)}
    return {"KETCH_CLUSTER_RANK": str(rank), "KETCH_CLUSTER_INFO": json.dumps(info)}


def others(d: Dispatcher, container_id: str, handle: ContainerHandle | None = None) -> list[str]:
    """The other live members of ``container_id``'s gang (none if it is in none)."""
    handle = handle or d.containers.get(container_id)
    if handle is None:
        return []
    leader = d.containers.get(handle.leader) if handle.leader else handle
    members = leader.gang if leader is not None and leader.gang else []
    if handle.leader and leader is None:  # its leader is gone: find the rest by name
        prefix = handle.leader + "-"
        members = [c for c in d.containers if c.startswith(prefix)]
    return [m for m in members if m != container_id and m in d.containers]


def ready(d: Dispatcher, leader: ContainerHandle) -> bool:
    """Whether the leader and every other member said "ready"."""
    return leader.ready and all(d.containers[m].ready for m in others(d, leader.id))


def member_message(
    d: Dispatcher, handle: ContainerHandle, pool: sm.Pool, msg: dict[str, Any], now: float
) -> None:
    """A member's (not the leader's) message: its readiness and init failure count; its
    outputs do not."""
    leader = d.containers.get(handle.leader or "")
    if leader is None:
        return
    kind = msg.get("t")
    if kind == "ready":
        handle.ready = True
        if ready(d, leader):
            d._perform(pool, pool.container_ready(leader.id, now))
    elif kind == "init_failed":
        d._perform(pool, pool.container_init_failed(leader.id, now, "init failed"), msg["error"])


def member_exited(d: Dispatcher, handle: ContainerHandle, reason: str) -> None:
    """One member ended: the others stop at once, and the leader's exit says why."""
    rest = others(d, handle.id, handle)
    if handle.leader is not None:
        leader = d.containers.get(handle.leader)
        if leader is not None and leader.gang_failure is None:
            rank = leader.gang.index(handle.id) if leader.gang else "?"
            leader.gang_failure = (
                f"lost a member of its gang ({handle.id}, rank {rank}) that {reason}"
            )
    for member in rest:  # what they run is lost without the member: no grace
        other = d.containers.get(member)
        if other is not None:
            other.stop_requested = True
        d.worker.terminate(member, 1.0)
