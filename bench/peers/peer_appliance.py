"""appliance.queue adapter: one worker per process with N slots (a WorkerSession). Each round trip completes the
jobs that finished and leases up to the free slots (Queue.finish_and_claim); when nothing is waiting,
wait_for_work, which a pub/sub wake-up ends early. Default QueueSettings (events on the stream and pub/sub)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout without `pip install -e`

import _harness  # noqa: E402

from appliance.queue import Capabilities, ClaimedJob, JobSpec, Queue, WorkerSession  # noqa: E402

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


async def _worker_process(url: str, concurrency: int) -> None:
    """One worker with `concurrency` slots, as a short-job worker runs: each round trip completes what finished
    and leases up to the free slots (Queue.finish_and_claim); jobs run as tasks."""
    queue = await Queue.connect(url, queue_name=QUEUE)
    session = await WorkerSession.open(queue, f"bench-{os.getpid()}", Capabilities(services=["bench"]))
    finished: list[tuple[str, str, Any]] = []
    changed = asyncio.Event()
    running = 0
    tasks: set[asyncio.Task[None]] = set()

    async def run(claimed: ClaimedJob) -> None:
        _harness.job_done(claimed.job.payload["t"])
        finished.append((claimed.job.id, claimed.token, None))
        changed.set()

    while True:
        outcomes = finished[:]
        finished.clear()
        changed.clear()
        _, claimed = await queue.finish_and_claim(
            outcomes, session.worker_id, session.shapes, concurrency - running + len(outcomes)
        )
        running += len(claimed) - len(outcomes)
        for job in claimed:
            task = asyncio.create_task(run(job))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if claimed or finished:
            continue
        if running:
            await changed.wait()
        else:
            await session.wait_for_work(1.0)


def run_worker(url: str, concurrency: int) -> None:
    asyncio.run(_worker_process(url, concurrency))


if __name__ == "__main__":
    _harness.main(sys.modules[__name__])
