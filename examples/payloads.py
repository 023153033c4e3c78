"""Large arguments and results travel through the blob store transparently.

ketch run examples/payloads.py --mb 20
"""

import hashlib
import json
import os
import random

import ketch

app = ketch.App("payloads")

MB = 1024 * 1024


@app.function()
def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@app.function()
def make_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


@app.local_entrypoint()
def main(mb: int = 20):
    data = os.urandom(mb * MB)
    show("big_argument", lambda: checksum.remote(data) == hashlib.sha256(data).hexdigest())

    def big_result():
        got = make_bytes.remote(mb * MB, 7)
        return len(got) == mb * MB and got == random.Random(7).randbytes(mb * MB)

    show("big_result", big_result)

    def map_of_medium():
        chunks = [os.urandom(3 * MB) for _ in range(6)]
        return list(checksum.map(chunks)) == [hashlib.sha256(c).hexdigest() for c in chunks]

    show("map_of_medium", map_of_medium)

    show("small_after_big", lambda: checksum.remote(b"abc") == hashlib.sha256(b"abc").hexdigest())
