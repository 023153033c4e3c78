"""A gang of three containers sums a number from each member: an all-reduce over TCP.

``@ketch.experimental.clustered(size=3)`` runs every call in three containers
started together. Each member learns its rank and the members' addresses from
``ketch.experimental.get_cluster_info()``; rank 0 gathers the members' values
and sends the sum back to each, as ``torch.distributed`` would with
``MASTER_ADDR = info.container_ips[0]``. The call's result is rank 0's.

With ``--lose-a-member``, rank 2 of the first attempt dies: the whole gang's
input fails with that reason and runs again, as a whole, in a new gang
(``retries=1``).

    ketch run examples/gang_all_reduce.py
    ketch run examples/gang_all_reduce.py --lose-a-member
"""

import hashlib
import json
import os
import socket
import time
import uuid

import ketch

app = ketch.App("gang-all-reduce")
attempts = ketch.Dict.from_name("gang-all-reduce-attempts", create_if_missing=True)


def _lines(sock: socket.socket) -> socket.SocketIO:
    return sock.makefile("rw")


def all_reduce(info: ketch.experimental.ClusterInfo, value: dict) -> list[dict]:
    """Every member's ``value``, in rank order, on every member."""
    digest = hashlib.sha256(info.cluster_id.encode()).hexdigest()
    port = 20000 + int(digest, 16) % 20000  # one port per gang: gangs on one node differ
    if info.rank == 0:
        with socket.create_server((info.container_ips[0], port)) as server:
            server.settimeout(60)
            peers = [server.accept()[0] for _ in range(info.size - 1)]
            files = [_lines(peer) for peer in peers]
            got = [value] + [json.loads(f.readline()) for f in files]
            got.sort(key=lambda v: v["rank"])
            for f in files:
                f.write(json.dumps(got) + "\n")
                f.flush()
            for peer in peers:
                peer.close()
            return got
    deadline = time.monotonic() + 60
    while True:  # rank 0 may not listen yet
        try:
            sock = socket.create_connection((info.container_ips[0], port), timeout=60)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with sock, _lines(sock) as f:
        f.write(json.dumps(value) + "\n")
        f.flush()
        return json.loads(f.readline())


@app.function(retries=1)
@ketch.experimental.clustered(size=3)
def reduce(x: int, lose_token: str = "") -> dict:
    info = ketch.experimental.get_cluster_info()
    if lose_token and info.rank == 2 and attempts.put(lose_token, True, skip_if_exists=True):
        os._exit(3)  # the first attempt's rank 2 dies; the gang's input runs again
    mine = {
        "rank": info.rank,
        "value": (info.rank + 1) * x,
        "node": os.environ.get("KETCH_NODE_ID", ""),
    }
    everyone = all_reduce(info, mine)
    return {
        "rank": info.rank,
        "size": info.size,
        "sum": sum(v["value"] for v in everyone),
        "nodes": [v["node"] for v in everyone],
        "ids": info.container_ids,
    }


@app.local_entrypoint()
def main(lose_a_member: bool = False):
    token = uuid.uuid4().hex if lose_a_member else ""
    result = reduce.remote(10, token)
    print("RESULT", json.dumps({"step": "reduce", "value": result}))
    if token:  # rank 2 of the first gang wrote it as it died
        print("RESULT", json.dumps({"step": "lost_once", "value": attempts.get(token) is True}))
