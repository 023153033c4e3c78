"""Dicts and Queues shared between containers.

    ketch run examples/dict_queue.py

A consumer container blocks on ``Queue.get`` until a producer container puts
work; results go into a Dict that the local entrypoint reads back.
"""

import json
import os

import ketch

app = ketch.App("dict-queue")
jobs = ketch.Queue.from_name("example-jobs", create_if_missing=True)
results = ketch.Dict.from_name("example-results", create_if_missing=True)


@app.function(timeout=120)
def consumer(n: int) -> dict:
    seen = []
    for _ in range(n):
        item = jobs.get(timeout=60)  # blocks until the producer puts
        results[item] = item * item
        seen.append(item)
    return {"seen": seen, "container": os.environ.get("KETCH_CONTAINER_ID")}


@app.function()
def producer(n: int) -> str:
    jobs.put_many(list(range(n)))
    return os.environ.get("KETCH_CONTAINER_ID", "")


@app.local_entrypoint()
def main(n: int = 5):
    jobs.clear()
    results.clear()
    waiting = consumer.spawn(n)  # starts first and blocks on the empty queue
    producer_container = producer.remote(n)
    got = waiting.get()
    squares = {k: results[k] for k in range(n)}
    line = {
        "step": "dict_queue",
        "value": {
            "seen": got["seen"],
            "squares": squares,
            "two_containers": got["container"] != producer_container,
            "dict_len": results.len(),
        },
    }
    print("RESULT " + json.dumps(line), flush=True)
