"""appliance.queue adapter: N async workers per process, each a WorkerSession (claim -> complete; when nothing is
waiting, wait_for_work, which a pub/sub wake-up ends early). Default QueueSettings (events on the stream and pub/sub)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout without `pip install -e`

import _harness  # noqa: E402

from appliance.queue import Capabilities, JobSpec, Queue  # noqa: E402

QUEUE = "bench"
_queue: Any = None


async def setup(url: str) -> None:
    global _queue
    _queue = await Queue.connect(url, queue_name=QUEUE)


async def enqueue_bulk(count: int) -> None:
    for start in range(0, count, 5_000):
        await _queue.submit_many(
            [JobSpec(service="bench", payload={"t": 0.0}) for _ in range(start, min(count, start + 5_000))]
        )


async def enqueue_one(t: float) -> None:
    await _queue.submit(JobSpec(service="bench", payload={"t": t}))


async def teardown() -> None:
    await _queue.close()


async def _worker(queue: Queue, index: int) -> None:
    session = await queue.worker_session(f"bench-{os.getpid()}-{index}", Capabilities(services=["bench"]))
    while True:
        claimed = await session.claim()
        if claimed is None:
            await session.wait_for_work(1.0)
            continue
        _harness.job_done(claimed.job.payload["t"])
        await queue.complete(claimed.job.id, claimed.token, None)


async def _workers(url: str, concurrency: int) -> None:
    queue = await Queue.connect(url, queue_name=QUEUE)
    await asyncio.gather(*(_worker(queue, i) for i in range(concurrency)))


def run_worker(url: str, concurrency: int) -> None:
    asyncio.run(_workers(url, concurrency))


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
