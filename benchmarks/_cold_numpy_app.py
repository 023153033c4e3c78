"""Case (b) of ``benchmarks/cold_start.py``: a function whose module imports numpy and
scikit-learn, with ``enable_memory_snapshot=True``.

The imports at top level run in every fresh container, so they are part of a fresh
cold start; with the snapshot they run once, in the function's fork template, and
containers fork from that state. Under the sandbox runtime the function runs in
``debian_slim`` + ``pip_install("numpy", "scikit-learn")``; scikit-learn is imported
where it is installed, so the host needs numpy alone. The local runtime applies no
image and uses the host venv's numpy.
"""

import os

import numpy

import ketch

image = ketch.Image.debian_slim().pip_install("numpy", "scikit-learn")
try:
    import sklearn.linear_model  # noqa: F401
except ImportError:  # the client, and the local runtime (the host's venv): numpy alone
    if os.environ.get("KETCH_SOURCE_ROOT") == "/root":  # in the sandbox's image it is there
        raise

app = ketch.App("bench-cold-numpy")


@app.function(image=image, enable_memory_snapshot=True)
def f(x):
    return int(numpy.arange(x).sum())
