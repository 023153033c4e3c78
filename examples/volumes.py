"""Volumes: files written in one container, read in another, and from the client.

    ketch run examples/volumes.py

A client uploads a config file; a ``train`` container reads it, writes a
"checkpoint" and commits; an ``evaluate`` container (another function, so
another container) mounts the Volume read-only (``vol.read_only()``: it only
reads, and its container starts without copying the Volume), reloads and
reads the checkpoint back; the client then
lists the Volume and reads the checkpoint itself. ``ketch volume ls
example-volume`` shows the files afterwards.
"""

import json
import os
import tempfile

import ketch

app = ketch.App("volumes")
vol = ketch.Volume.from_name("example-volume", create_if_missing=True)
MOUNT = "/data"


@app.function(volumes={MOUNT: vol})
def train(steps: int) -> dict:
    config = json.load(open(f"{MOUNT}/config.json"))
    os.makedirs(f"{MOUNT}/checkpoints", exist_ok=True)
    weights = [config["lr"] * i for i in range(steps)]
    with open(f"{MOUNT}/checkpoints/latest.json", "w") as fh:
        json.dump({"steps": steps, "weights": weights}, fh)
    vol.commit()  # now other containers can see it (after their reload)
    return {"container": os.environ.get("KETCH_CONTAINER_ID")}


@app.function(volumes={MOUNT: vol.read_only()})
def evaluate() -> dict:
    vol.reload()  # pick up what train committed
    checkpoint = json.load(open(f"{MOUNT}/checkpoints/latest.json"))
    return {
        "steps": checkpoint["steps"],
        "score": sum(checkpoint["weights"]),
        "container": os.environ.get("KETCH_CONTAINER_ID"),
    }


@app.local_entrypoint()
def main(steps: int = 4):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.json")
        with open(path, "w") as fh:
            json.dump({"lr": 0.5}, fh)
        with vol.batch_upload(force=True) as batch:
            batch.put_file(path, "/config.json")
    trained = train.remote(steps)
    evaluated = evaluate.remote()
    listing = sorted(e.path for e in vol.listdir("/", recursive=True))
    from_client = json.loads(b"".join(vol.read_file("checkpoints/latest.json")))
    line = {
        "step": "volumes",
        "value": {
            "steps": evaluated["steps"],
            "score": evaluated["score"],
            "two_containers": trained["container"] != evaluated["container"],
            "listing": listing,
            "client_steps": from_client["steps"],
        },
    }
    print("RESULT " + json.dumps(line), flush=True)
