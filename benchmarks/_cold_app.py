"""Case (a) of ``benchmarks/cold_start.py``: the trivial ``f(x) -> x``.

A module of its own because ketch containers import the user's module by file
path: whatever this file imports at top level is part of the measured cold
start, so it imports ketch and nothing else. Under the sandbox runtime the
function runs in the default image (``debian_slim`` with this machine's Python).
"""

import ketch

app = ketch.App("bench-cold-trivial")


@app.function()
def f(x):
    return x


@app.function(max_containers=60)
def hold(seconds):
    """Stay busy (the 0 -> N measurement); reports when it began."""
    import time

    began = time.time()
    time.sleep(seconds)
    return began
