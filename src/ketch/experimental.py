"""``ketch.experimental``: gangs of containers, as Modal's ``modal.experimental`` has them.

``@ketch.experimental.clustered(size=N)`` under ``@app.function`` makes each
call run in a gang of N containers started together: every member gets the
same input, and the call's result is rank 0's. Inside, ``get_cluster_info()``
says the member's rank, the gang's id, and every member's address (the node
it runs on; containers share their node's network), in rank order, which is
what ``torch.distributed`` needs to rendezvous. On a Ray cluster a gang is one
placement group with a bundle per member, one node each where there are
enough nodes. A member that ends (crashes, or is lost with its node) ends the
whole gang; its input fails with that reason, or runs again, as a whole,
under the function's ``retries``.

Under ``@app.cls`` it makes every container of the class a gang of N: each
member runs the class's ``@enter`` hooks, every method call goes to all of
them, and the call's result is rank 0's.

Example::

    @app.function(cpu=1)
    @ketch.experimental.clustered(size=2)
    def train():
        info = ketch.experimental.get_cluster_info()
        os.environ["MASTER_ADDR"] = info.container_ips[0]
        ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .exception import InvalidError

F = TypeVar("F", bound=Callable[..., Any])
MAX_CLUSTER_SIZE = 64


@dataclass(frozen=True)
class ClusterInfo:
    """This container's place in its gang."""

    rank: int
    cluster_id: str
    container_ids: list[str]
    container_ips: list[str]  # in rank order
    container_ipv4_ips: list[str]

    @property
    def size(self) -> int:
        return len(self.container_ids)


def clustered(size: int, broadcast: bool = True, rdma: bool = False) -> Callable[[F], F]:
    """Run each call of the function in a gang of ``size`` containers (see the module).

    ``broadcast`` (every member gets the input) is the only mode; ``rdma`` is
    accepted and has no effect (no RDMA fabric here).
    """
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_CLUSTER_SIZE:
        raise InvalidError(
            f"clustered(size=) takes 1 to {MAX_CLUSTER_SIZE} containers, not {size!r}"
        )
    if not broadcast:
        raise InvalidError(
            "clustered(broadcast=False) is not supported: every member gets the input"
        )

    def wrap(fn: F) -> F:
        if not callable(fn):
            raise InvalidError(
                "@ketch.experimental.clustered goes on a function or a class, under "
                "@app.function or @app.cls"
            )
        fn.__ketch_clustered__ = size  # type: ignore[attr-defined]
        return fn

    return wrap


def get_cluster_info() -> ClusterInfo:
    """The rank, gang id and members' addresses of this container (in a clustered function)."""
    raw = os.environ.get("KETCH_CLUSTER_INFO")
    if not raw:
        raise InvalidError(
            "get_cluster_info() works inside a @ketch.experimental.clustered function's container"
        )
    data = json.loads(raw)
    rank = int(os.environ.get("KETCH_CLUSTER_RANK", "0"))
    ips = [str(ip) for ip in data["ips"]]
    return ClusterInfo(rank, str(data["id"]), [str(c) for c in data["ids"]], ips, ips)
