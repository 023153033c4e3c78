"""Case (b) of ``benchmarks/cold_start.py``: a function whose module imports numpy.

The ``import numpy`` at top level runs in every fresh container, so it is part
of the measured cold start. Under the sandbox runtime the function runs in
``debian_slim`` + ``pip_install("numpy")``; the local runtime applies no image
and uses the host venv's numpy (the client imports this module too, so the
host needs numpy either way).
"""

import numpy

import ketch

app = ketch.App("bench-cold-numpy")


@app.function(image=ketch.Image.debian_slim().pip_install("numpy"))
def f(x):
    return int(numpy.arange(x).sum())
