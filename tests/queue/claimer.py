"""A real worker process for the queue's concurrency and crash tests (not a mock: the real client and scripts).

    python tests/queue/claimer.py URL PROCESS_INDEX WORKERS [--hang]

Runs WORKERS async workers; each claims, completes with its worker id, and records every successful completion
in the Redis list `test:completions`. With --hang, the first claimed job is never finished (the test kill -9s
the process). Exits when the queue has nothing waiting or leased.
"""

from __future__ import annotations

import asyncio
import sys

from appliance.queue import Capabilities, LeaseLost, Queue, QueueSettings, WorkerSession

TAGS = [f"t{i}" for i in range(8)]


def capabilities(process: int, worker: int) -> Capabilities:
    # Each worker serves 4 of the 8 tag shapes; together every shape is covered many times over.
    start = (process * 3 + worker) % len(TAGS)
    return Capabilities(services=["echo"], tags=[TAGS[(start + i) % len(TAGS)] for i in range(4)])


async def work(queue: Queue, process: int, index: int, hang: bool) -> None:
    session = await WorkerSession.open(queue, f"p{process}-w{index}", capabilities(process, index))
    idle_rounds = 0
    try:
        while True:
            claimed = await session.claim()
            if claimed is None:
                stats = await queue.stats()
                if stats.waiting == 0 and stats.active == 0 and stats.delayed == 0:
                    idle_rounds += 1
                    if idle_rounds > 3:
                        return
                await queue.reap()
                await session.wait_for_work(0.2)
                continue
            idle_rounds = 0
            if hang:
                print(f"claimed {claimed.job.id}", flush=True)
                await asyncio.sleep(3600)
            try:
                await queue.complete(claimed.job.id, claimed.token, {"worker": session.worker_id})
            except LeaseLost:
                continue
            await queue.client.rpush("test:completions", claimed.job.id)
    finally:
        await session.close()


async def main() -> None:
    url, process, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hang = "--hang" in sys.argv
    queue = await Queue.connect(
        url, settings=QueueSettings(lease_ms=1000, reaper_interval_ms=200), max_connections=workers + 8
    )
    try:
        await asyncio.gather(*(work(queue, process, i, hang) for i in range(workers)))
    finally:
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
