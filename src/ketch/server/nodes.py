"""``ketch node list``: the nodes that run containers, with what they have and hold.

The embedded control plane has one node, this machine. Each row says its
CPUs, memory (total and available), GPUs (type, memory, and which container
holds each), how many containers and sandboxes run on it, its runtime and its
health. On a Ray cluster (issue 17) every node of the cluster gets a row.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from .rpc import rpc

if TYPE_CHECKING:
    from ..worker.gpus import GpuAllocator
    from .api import Api


def memory_mib() -> tuple[int, int]:
    """(total, available) MiB of this machine, from /proc/meminfo."""
    try:
        with open("/proc/meminfo") as fh:
            return parse_meminfo(fh.read())
    except OSError:
        return 0, 0


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in MiB of ``/proc/meminfo``'s text (0 where missing)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable") and value.split():
            found[key] = int(value.split()[0]) // 1024
    return found.get("MemTotal", 0), found.get("MemAvailable", 0)


def gpu_rows(allocator: GpuAllocator) -> list[dict[str, Any]]:
    """A node's GPUs as ``ketch node list`` shows them, with the container holding each."""
    holders = {index: owner for owner, indices in allocator.busy().items() for index in indices}
    return [
        {
            "index": g.index,
            "type": g.kind,
            "name": g.name,
            "memory_mib": g.memory_mib,
            "container": holders.get(g.index),
        }
        for g in allocator.inventory.gpus
    ]


def this_node(api: Api) -> dict[str, Any]:
    d = api.d
    gpus = gpu_rows(d.gpus)
    total, available = memory_mib()
    sandboxes = d.sandboxes.running_count() if d.sandboxes is not None else 0
    return {
        "node_id": "local",
        "hostname": socket.gethostname(),
        "address": "127.0.0.1",
        "cpus": os.cpu_count() or 1,
        "memory_mib": total,
        "memory_available_mib": available,
        "gpus": gpus,
        "containers": len(d.containers),
        "sandboxes": sandboxes,
        "max_containers": d.max_containers,
        "runtime": d.worker.name,
        "health": "ok",
    }


@rpc
async def NodeList(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    from ..cluster.ray_worker import RayWorker

    worker = api.d.worker
    if isinstance(worker, RayWorker):  # a Ray cluster's nodes
        await worker.refresh()
        return {"nodes": worker.node_rows()}
    return {"nodes": [this_node(api)]}
