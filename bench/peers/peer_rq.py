"""RQ adapter: SimpleWorker (runs jobs in the worker process, no fork per job), result_ttl=0 (no result kept).
RQ runs one job at a time per worker process, so its concurrency is the number of processes."""

from __future__ import annotations

import sys
from typing import Any

import _harness
from redis import Redis
from rq import Queue, SimpleWorker

_queue: Any = None


def noop(t: float) -> None:
    _harness.job_done(t)


def setup(url: str) -> None:
    global _queue
    _queue = Queue("bench", connection=Redis.from_url(url))


def enqueue_bulk(count: int) -> None:
    for start in range(0, count, 1_000):
        _queue.enqueue_many(
            [
                Queue.prepare_data("peer_rq.noop", args=(0.0,), result_ttl=0)
                for _ in range(start, min(count, start + 1_000))
            ]
        )


def enqueue_one(t: float) -> None:
    _queue.enqueue("peer_rq.noop", t, result_ttl=0)


def teardown() -> None:
    pass


def run_worker(url: str, concurrency: int) -> None:
    connection = Redis.from_url(url)
    SimpleWorker([Queue("bench", connection=connection)], connection=connection).work(logging_level="WARNING")


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
