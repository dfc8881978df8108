"""BullMQ (Python package) adapter: Worker with concurrency N, removeOnComplete (no finished job kept)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import _harness
from bullmq import Queue, Worker

_queue: Any = None
OPTS = {"removeOnComplete": True, "removeOnFail": True}


async def noop(job: Any, token: str) -> None:
    _harness.job_done(job.data["t"])


async def setup(url: str) -> None:
    global _queue
    _queue = Queue("bench", {"connection": url})


async def enqueue_bulk(count: int) -> None:
    for start in range(0, count, 1_000):
        await _queue.addBulk(
            [
                {"name": "noop", "data": {"t": 0.0}, "opts": OPTS}
                for _ in range(start, min(count, start + 1_000))
            ]
        )


async def enqueue_one(t: float) -> None:
    await _queue.add("noop", {"t": t}, OPTS)


async def teardown() -> None:
    await _queue.close()


async def _work(url: str, concurrency: int) -> None:
    worker = Worker("bench", noop, {"connection": url, "concurrency": concurrency})
    await asyncio.Future()  # runs until the orchestrator stops the process
    await worker.close()


def run_worker(url: str, concurrency: int) -> None:
    asyncio.run(_work(url, concurrency))


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
