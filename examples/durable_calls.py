"""More work that must survive a `kill -9` of the control plane.

    ketch run examples/durable_calls.py::long_remote
    ketch run examples/durable_calls.py::slow_map
    ketch run examples/durable_calls.py::stream

Each entrypoint prints STARTED once work is under way, then a final OK/WRONG line.
"""

import time

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


@app.local_entrypoint()
def long_remote():
    print("STARTED", flush=True)
    result = slow_double.remote(21, 6.0)
    print("OK" if result == 42 else f"WRONG {result}", flush=True)


@app.local_entrypoint()
def slow_map(n: int = 12):
    results = []
    for i, r in enumerate(slow_double.map(range(n))):
        if i == 0:
            print("STARTED", flush=True)
        results.append(r)
    expected = [2 * x for x in range(n)]
    print("OK" if results == expected else f"WRONG {results}", flush=True)


@app.local_entrypoint()
def stream(n: int = 60):
    print("STARTED", flush=True)
    values = list(ticks.remote_gen(n))
    print("OK" if values == list(range(n)) else f"WRONG {values}", flush=True)
