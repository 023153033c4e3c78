"""The ketch workload of ``benchmarks/core.py``.

It lives in its own small module because ketch containers import the user's
module by file path (as Modal does), so the function has to sit at module top
level in a file that imports nothing heavy (Ray is never imported here).
"""

import ketch

app = ketch.App("bench-core")


@app.function()
def f(x):
    return x
