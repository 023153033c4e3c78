"""Ray's side of case (b) of ``benchmarks/cold_start.py``.

A plain class in a module that imports numpy at top level and nothing else
(no ketch, no Ray): ``ray.remote(NumpyEcho)`` pickles the class by reference,
so a fresh actor's worker imports this module, numpy included, before its
first method runs.
"""

import numpy


class NumpyEcho:
    def f(self, x):
        return int(numpy.arange(x).sum())


class ModelEcho:
    """Ray's side of case (c): the actor builds the 500 MB model as it starts."""

    def __init__(self):
        import os

        self.weights = bytearray(os.urandom(500 << 20))

    def f(self, x):
        return x + self.weights[x] * 0
