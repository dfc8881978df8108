"""arq adapter: arq's defaults (poll_delay 0.5 s) with max_jobs = the concurrency and keep_result=0."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import _harness
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

_pool: Any = None


async def noop(ctx: dict[str, Any], t: float) -> None:
    _harness.job_done(t)


async def setup(url: str) -> None:
    global _pool
    _pool = await create_pool(RedisSettings.from_dsn(url))


async def enqueue_bulk(count: int) -> None:
    for start in range(0, count, 200):
        await asyncio.gather(*(_pool.enqueue_job("noop", 0.0) for _ in range(start, min(count, start + 200))))


async def enqueue_one(t: float) -> None:
    await _pool.enqueue_job("noop", t)


async def teardown() -> None:
    await _pool.aclose()


def run_worker(url: str, concurrency: int) -> None:
    Worker(
        functions=[noop], redis_settings=RedisSettings.from_dsn(url), max_jobs=concurrency, keep_result=0
    ).run()


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
