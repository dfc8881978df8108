"""Celery adapter, Redis broker, no result backend (task_ignore_result), acks early (the default), gossip, mingle
and heartbeat off. Concurrency 1: --pool=solo; otherwise --pool=threads -c N."""

from __future__ import annotations

import os
import sys

import _harness
from celery import Celery

app = Celery("peer_celery", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


@app.task(name="noop")
def noop(t: float) -> None:
    _harness.job_done(t)


def setup(url: str) -> None:
    app.conf.broker_url = url


def enqueue_bulk(count: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            noop.apply_async((0.0,), producer=producer)


def enqueue_one(t: float) -> None:
    noop.apply_async((t,))


def teardown() -> None:
    pass


def run_worker(url: str, concurrency: int) -> None:
    app.conf.broker_url = url
    pool = ["--pool=solo"] if concurrency == 1 else ["--pool=threads", f"--concurrency={concurrency}"]
    app.worker_main(
        ["worker", *pool, "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING"]
    )


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
