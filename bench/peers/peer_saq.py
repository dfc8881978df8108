"""SAQ adapter: RedisQueue + Worker(concurrency=C), SAQ's defaults otherwise (finished jobs kept for their ttl)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import _harness
from saq import Queue, Worker

QUEUE = "bench"
_queue: Any = None


async def noop(ctx: dict[str, Any], *, t: float) -> None:
    _harness.job_done(t)


async def setup(url: str) -> None:
    global _queue
    _queue = Queue.from_url(url, name=QUEUE)
    await _queue.connect()


async def enqueue_bulk(count: int) -> None:
    for start in range(0, count, 200):
        await asyncio.gather(*(_queue.enqueue("noop", t=0.0) for _ in range(start, min(count, start + 200))))


async def enqueue_one(t: float) -> None:
    await _queue.enqueue("noop", t=t)


async def teardown() -> None:
    await _queue.disconnect()


async def _work(url: str, concurrency: int) -> None:
    queue = Queue.from_url(url, name=QUEUE)
    worker = Worker(queue, functions=[noop], concurrency=concurrency)
    await worker.start()


def run_worker(url: str, concurrency: int) -> None:
    asyncio.run(_work(url, concurrency))


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
