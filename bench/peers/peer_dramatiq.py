"""Dramatiq adapter, Redis broker, default middleware, max_retries=0. Workers run through dramatiq's own CLI
(`dramatiq peer_dramatiq --processes P --threads T`), its idiomatic multi-process form."""

from __future__ import annotations

import os
import sys

import _harness
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0, queue_name="bench")
def noop(t: float) -> None:
    _harness.job_done(t)


def setup(url: str) -> None:
    pass  # the broker reads BENCH_REDIS_URL at import (the harness sets it before this module is used)


def enqueue_bulk(count: int) -> None:
    for _ in range(count):
        noop.send(0.0)


def enqueue_one(t: float) -> None:
    noop.send(t)


def teardown() -> None:
    pass


def run_worker(url: str, concurrency: int) -> None:
    # bench/throughput.py starts the workers with dramatiq's CLI: this module is not importable there.
    raise SystemExit(
        "dramatiq workers start through `python -m dramatiq peer_dramatiq` (bench/throughput.py)"
    )


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
