"""Modal's ``with_options``, ``with_concurrency``, ``with_batching`` and ``@modal.batched``
on a class method on its own, as a Modal app writes them."""

import os
import time
import uuid

import modal

app = modal.App("compat-with-options")


@app.function(env={"SIZE": "small"})
def where(x: int) -> dict:
    return {
        "x": x,
        "size": os.environ.get("SIZE"),
        "extra": os.environ.get("EXTRA"),
        "pid": os.getpid(),
    }


@app.cls(env={"SIZE": "small"})
class Model:
    name: str = modal.parameter(default="m")

    @modal.enter()
    def load(self):
        self.pid = os.getpid()

    @modal.method()
    def describe(self) -> dict:
        return {"name": self.name, "size": os.environ.get("SIZE"), "pid": self.pid}

    @modal.method()
    def meet(self, meeting: modal.Dict, n: int) -> int | None:
        """Returns only once ``n`` inputs run at once, in this one container."""
        meeting.put(uuid.uuid4().hex, True)
        deadline = time.monotonic() + 30
        while meeting.len() < n:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        return os.getpid()


@app.cls()
class Embedder:
    @modal.batched(max_batch_size=4, wait_ms=300)
    def embed(self, xs: list[int]) -> list[dict]:
        return [{"x": x, "batch": len(xs)} for x in xs]


@app.function(max_inputs=1)
def single_use(x: int) -> int:
    return os.getpid()


@app.local_entrypoint()
def main():
    print("SINGLE_USE", len(set(single_use.map(range(3)))))
    base = where.remote(1)
    big = where.with_options(env={"SIZE": "big", "EXTRA": "1"}, timeout=100, cpu=0.5)
    got = big.remote(2)
    print("FN_VARIANT", got["size"], got["extra"], got["pid"] != base["pid"], base["size"])
    print("FN_VARIANT_MAP", sorted(r["x"] for r in big.map(range(3))))

    small = Model(name="a").describe.remote()
    Big = Model.with_options(env={"SIZE": "big"}, retries=1, max_containers=1)
    large = Big(name="a").describe.remote()
    print("CLS_VARIANT", small["size"], large["size"], small["pid"] != large["pid"], large["name"])

    Wide = Model.with_options(max_containers=1).with_concurrency(max_inputs=6)
    with modal.Dict.ephemeral() as meeting:
        pids = list(Wide().meet.map([meeting] * 6, [6] * 6))
    print("CONCURRENCY", None not in pids and len(set(pids)) == 1)

    batches = [r["batch"] for r in Embedder().embed.map(range(8))]
    print("BATCHED", [r["x"] for r in Embedder().embed.map(range(3))], 1 < max(batches) <= 4)
    print("SINGLE", Embedder().embed.remote(7))

    Pairs = Embedder.with_batching(max_batch_size=2, wait_ms=300)
    sizes = [r["batch"] for r in Pairs().embed.map(range(6))]
    print("WITH_BATCHING", max(sizes) == 2, len(sizes))

    try:
        where.with_options(gpu="NOPE")
    except modal.exception.InvalidError as exc:
        print("BAD_GPU", "unknown GPU type" in str(exc))
