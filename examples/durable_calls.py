"""More work that must survive a `kill -9` of the control plane.

    ketch run examples/durable_calls.py::long_remote
    ketch run examples/durable_calls.py::slow_map
    ketch run examples/durable_calls.py::stream
    ketch run examples/durable_calls.py::together

Each entrypoint prints STARTED once work is under way, then a final OK/WRONG line;
``together`` runs the other three at once, so that one kill catches all of them
mid-flight, and prints one OK/WRONG word for each.
"""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import ketch

app = ketch.App("durable-calls")


@app.function()
def slow_double(x: int, seconds: float = 2.0) -> int:
    time.sleep(seconds)
    return 2 * x


@app.function()
def ticks(n: int):
    for i in range(n):
        time.sleep(0.1)
        yield i


def _say_started() -> None:
    print("STARTED", flush=True)


def _remote(started: Callable[[], None], seconds: float = 6.0) -> str:
    started()
    result = slow_double.remote(21, seconds)
    return "OK" if result == 42 else f"WRONG {result}"


def _map(started: Callable[[], None], n: int = 12) -> str:
    results = []
    for i, r in enumerate(slow_double.map(range(n))):
        if i == 0:
            started()
        results.append(r)
    return "OK" if results == [2 * x for x in range(n)] else f"WRONG {results}"


def _stream(started: Callable[[], None], n: int = 60) -> str:
    started()
    values = list(ticks.remote_gen(n))
    return "OK" if values == list(range(n)) else f"WRONG {values}"


@app.local_entrypoint()
def long_remote():
    print(_remote(_say_started), flush=True)


@app.local_entrypoint()
def slow_map(n: int = 12):
    print(_map(_say_started, n), flush=True)


@app.local_entrypoint()
def stream(n: int = 60):
    print(_stream(_say_started, n), flush=True)


@app.local_entrypoint()
def together():
    left = [3]
    lock = threading.Lock()

    def started() -> None:
        # One STARTED line, once the slowest of the three (the map's first result) is under way.
        with lock:
            left[0] -= 1
            if left[0] == 0:
                _say_started()

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda check: check(started), (_remote, _map, _stream)))
    print(" ".join(outcomes), flush=True)
