"""A pool of sandboxes: many isolated workers created at once, each given jobs.

    ketch run examples/sandbox_pool.py

Evaluation harnesses and agents often run the same untrusted program against
many inputs. This example creates a pool of sandboxes concurrently (with
``.aio`` and asyncio), tags them, finds them again with ``Sandbox.list``,
spreads jobs over them round-robin with several commands running at once, and
terminates them all at the end.
"""

import asyncio
import json
import time

import ketch

app = ketch.App("sandbox-pool")
POOL = 4

PROGRAM = "import sys, hashlib; n = int(sys.argv[1]); print(n, sum(i * i for i in range(n)))"


async def run_job(sandbox, n: int) -> str:
    process = await sandbox.exec.aio("python3", "-c", PROGRAM, str(n))
    out = await process.stdout.read.aio()
    assert await process.wait.aio() == 0
    return out.strip()


async def run_pool(jobs: list[int]) -> dict:
    started = time.monotonic()
    pool = await asyncio.gather(
        *(
            ketch.Sandbox.create.aio(app=app, tags={"pool": "eval"}, timeout=300)
            for _ in range(POOL)
        )
    )
    created_s = time.monotonic() - started
    try:
        listed = [sb.object_id async for sb in ketch.Sandbox.list.aio(tags={"pool": "eval"})]
        results = await asyncio.gather(*(run_job(pool[i % POOL], n) for i, n in enumerate(jobs)))
    finally:
        await asyncio.gather(*(sb.terminate.aio() for sb in pool))
    return {
        "results": results,
        "listed_all": sorted(listed) == sorted(sb.object_id for sb in pool),
        "created_s": round(created_s, 2),
    }


@app.local_entrypoint()
def main(jobs: int = 12):
    value = asyncio.run(run_pool(list(range(1, jobs + 1))))
    for line in value["results"]:
        print(line)
    print(f"{POOL} sandboxes created in {value['created_s']} s")
    print("RESULT " + json.dumps({"step": "pool", "value": value}))
