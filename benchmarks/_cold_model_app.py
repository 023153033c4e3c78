"""Case (c) of ``benchmarks/cold_start.py``: a class whose ``@enter(snap=True)`` hook
builds a 500 MB in-memory model (random bytes: about 2 s on this machine).

With ``enable_memory_snapshot=True`` the hook runs once, in the class's fork template;
each container forks from that state (the model shared copy-on-write) and runs its
``@enter(snap=False)`` hook. Without snapshots (``fork_containers`` off, or the local
runtime) every container builds the model itself. ``call(x)`` is what a trial times.
"""

import os

import ketch

MODEL_MB = int(os.environ.get("KETCH_BENCH_MODEL_MB", "500"))

app = ketch.App("bench-cold-model")


@app.cls(enable_memory_snapshot=True, max_containers=60)
class Model:
    @ketch.enter(snap=True)
    def load(self):
        self.weights = bytearray(os.urandom(MODEL_MB << 20))

    @ketch.enter(snap=False)
    def ready(self):
        self.n = len(self.weights)

    @ketch.method()
    def predict(self, x):
        return x + self.weights[x % self.n] * 0

    @ketch.method()
    def hold(self, seconds):
        """Stay busy (for the 0 -> N and memory measurements); reports when it began."""
        import time

        began = time.time()
        time.sleep(seconds)
        return began


def call(x):
    return Model().predict.remote(x)
