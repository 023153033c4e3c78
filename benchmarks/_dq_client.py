"""One client process of ``benchmarks/dict_queue.py``; not a benchmark of its own.

``python _dq_client.py ketch|redis INDEX PORT`` connects (ketch: the control
plane of ``KETCH_HOME``, auto-started there if it is down; redis:
127.0.0.1:PORT over one redis-py connection), warms up on a dict and a queue
of its own, prints ``DQ {"ready": true}`` and then runs one phase per JSON
line read on stdin, answering each with one ``DQ {...}`` line::

    {"op": "dict_put", "start_at": T, "duration": S, "max_ops": N, "keys": K}
    -> {"ops": n, "t0": ..., "t1": ..., "cpu_s": ..., "lat_us": [...]}

``op`` is ``dict_put``, ``dict_get``, ``queue_put`` or ``queue_get``.
``start_at`` is a ``time.monotonic()`` instant (CLOCK_MONOTONIC, the same in
every process of the machine), so the clients of a phase start together. A
phase ends after ``duration`` seconds or ``max_ops`` operations, whichever
comes first. Keys are this client's own (``c<INDEX>:<j>`` for j < K); every
value is this client's 100-byte payload, and each get checks what it read.
A failed phase answers ``{"error": traceback}`` and the process exits 1; EOF
on stdin ends it.
"""

from __future__ import annotations

import json
import queue
import sys
import time
import traceback
from collections.abc import Callable

PAYLOAD_BYTES = 100
WARMUP_OPS = 100  # untimed operations of each kind before "ready"

# Names shared with dict_queue.py (which checks the sizes afterwards).
KETCH_DICT = "dq-dict"
KETCH_QUEUE = "dq-queue"
REDIS_DICT_PREFIX = "dq:dict:"
REDIS_QUEUE = "dq:queue"

Ops = dict[str, Callable]


def reply(msg: dict) -> None:
    sys.stdout.write("DQ " + json.dumps(msg) + "\n")
    sys.stdout.flush()


def ketch_ops(dict_name: str, queue_name: str) -> Ops:
    """The four operations through ketch's public blocking API (one request each)."""
    import ketch

    d = ketch.Dict.from_name(dict_name, create_if_missing=True)
    q = ketch.Queue.from_name(queue_name, create_if_missing=True)
    d.hydrate()  # the name lookups happen here, not in the first timed operation
    q.hydrate()

    def queue_get():
        return q.get(block=False)  # queue.Empty if nothing is there

    return {"dict_put": d.put, "dict_get": d.get, "queue_put": q.put, "queue_get": queue_get}


def redis_ops(conn, dict_prefix: str, queue_key: str) -> Ops:
    """The Redis equivalents: SET, GET, RPUSH, LPOP (one round trip each)."""

    def dict_put(key, value):
        conn.set(dict_prefix + key, value)

    def dict_get(key):
        return conn.get(dict_prefix + key)

    def queue_put(value):
        conn.rpush(queue_key, value)

    def queue_get():
        value = conn.lpop(queue_key)
        if value is None:
            raise queue.Empty()
        return value

    return {
        "dict_put": dict_put,
        "dict_get": dict_get,
        "queue_put": queue_put,
        "queue_get": queue_get,
    }


def warm_up(ops: Ops, index: int, payload: bytes) -> None:
    for i in range(WARMUP_OPS):
        key = f"w{index}:{i % 10}"
        ops["dict_put"](key, payload)
        if ops["dict_get"](key) != payload:
            raise AssertionError("warm-up: dict get returned something else")
        ops["queue_put"](payload)
        if ops["queue_get"]() != payload:
            raise AssertionError("warm-up: queue get returned something else")


def run_phase(ops: Ops, cmd: dict, index: int, payload: bytes) -> dict:
    op = cmd["op"]
    fn = ops[op]
    max_ops = int(cmd["max_ops"])
    keys = [f"c{index}:{j}" for j in range(max(1, int(cmd.get("keys") or 1)))]
    nkeys = len(keys)
    lat: list[float] = []
    record = lat.append
    clock = time.perf_counter

    delay = float(cmd["start_at"]) - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    deadline = clock() + float(cmd["duration"])
    n = 0
    if op == "dict_put":
        while n < max_ops:
            a = clock()
            fn(keys[n % nkeys], payload)
            b = clock()
            record(b - a)
            n += 1
            if b >= deadline:
                break
    elif op == "dict_get":
        while n < max_ops:
            a = clock()
            got = fn(keys[n % nkeys])
            b = clock()
            record(b - a)
            if got != payload:
                raise AssertionError(f"dict get {keys[n % nkeys]!r} returned {got!r:.60}")
            n += 1
            if b >= deadline:
                break
    elif op == "queue_put":
        while n < max_ops:
            a = clock()
            fn(payload)
            b = clock()
            record(b - a)
            n += 1
            if b >= deadline:
                break
    elif op == "queue_get":
        while n < max_ops:
            a = clock()
            got = fn()
            b = clock()
            record(b - a)
            if not isinstance(got, bytes) or len(got) != PAYLOAD_BYTES:
                raise AssertionError(f"queue get returned {got!r:.60}")
            n += 1
            if b >= deadline:
                break
    else:
        raise ValueError(f"unknown op {op!r}")
    t1 = time.monotonic()
    cpu_s = time.process_time() - cpu0
    return {
        "ops": n,
        "t0": t0,
        "t1": t1,
        "cpu_s": cpu_s,
        "lat_us": [round(x * 1e6, 1) for x in lat],
    }


def main() -> int:
    system, index, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    payload = bytes([ord("a") + index % 26]) * PAYLOAD_BYTES
    if system == "ketch":
        warm = ketch_ops("dq-warm", f"dq-warm-{index}")
        ops = ketch_ops(KETCH_DICT, KETCH_QUEUE)
    elif system == "redis":
        import redis

        conn = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60)
        warm = redis_ops(conn, "dq:warm:", f"dq:warm:{index}")
        ops = redis_ops(conn, REDIS_DICT_PREFIX, REDIS_QUEUE)
    else:
        raise SystemExit(f"unknown system {system!r}")
    warm_up(warm, index, payload)
    reply({"ready": True})

    while True:
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        try:
            reply(run_phase(ops, json.loads(line), index, payload))
        except Exception:  # noqa: BLE001 - the parent reports it
            reply({"error": traceback.format_exc()})
            return 1


if __name__ == "__main__":
    sys.exit(main())
