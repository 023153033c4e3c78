"""Autoscaling knobs: warm containers and scale to zero.

    ketch deploy examples/scaling.py

`warm` always keeps one container up (min_containers=1); `quick` scales down
to zero containers two seconds after its last input (scaledown_window=2).
"""

import os

import ketch

app = ketch.App("scaling-demo")


@app.function(scaledown_window=2)
def quick() -> int:
    return os.getpid()


@app.function(min_containers=1, scaledown_window=2)
def warm() -> int:
    return os.getpid()
