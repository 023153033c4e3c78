"""The smallest ketch app: one function, called remotely, locally and over a map.

Run it with::

    ketch run examples/hello_world.py
"""

import os

import ketch

app = ketch.App("hello-world")


@app.function()
def square(x: int) -> int:
    print(f"squaring {x} in container pid {os.getpid()}")
    return x * x


@app.local_entrypoint()
def main():
    print("remote:", square.remote(4))
    print("local:", square.local(5))
    print("map:", list(square.map(range(5))))
