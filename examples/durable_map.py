"""A long map that survives a restart of the control plane.

    ketch run examples/durable_map.py --n 1000

Kill the control plane while it runs (``kill -9`` the pid in
``$KETCH_HOME/server.json``), then ``ketch server start``: the client
reconnects and every result still arrives, in order.
"""

import time

import ketch

app = ketch.App("durable-map")


@app.function(max_containers=2)
def slow_inc(x: int) -> int:
    time.sleep(0.01)
    return x + 1


@app.local_entrypoint()
def main(n: int = 1000):
    total = 0
    in_order = True
    for i, result in enumerate(slow_inc.map(range(n))):
        if i == 0:
            print("FIRST-RESULT", flush=True)
        in_order = in_order and result == i + 1
        total += result
        if i % 100 == 99:
            print(f"progress {i + 1}/{n}", flush=True)
    print(f"SUM={total} EXPECTED={n * (n + 1) // 2}", flush=True)
    print("ORDER-OK" if in_order else "ORDER-WRONG", flush=True)
