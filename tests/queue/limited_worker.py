"""A real worker process for the limits tests (the real client and scripts, not a mock).

    python tests/queue/limited_worker.py URL PROCESS WORKERS POOL HOLD_MS [--hang]

Runs WORKERS async workers of pool POOL ('-' for none), ids `p<PROCESS>-w<i>`; each claims one job at a time,
holds it HOLD_MS (so leases overlap and a cap is really tested), then completes it. With --hang, the first
claimed job is never finished and its id printed (the test kill -9s the process). Each worker prints `ready`
and waits for a token the test pushes onto the list `test:go` before its first claim. Exits when nothing is
waiting, leased, delayed or held by a limit.
"""

from __future__ import annotations

import asyncio
import sys

from appliance.queue import Capabilities, LeaseLost, Queue, QueueSettings, WorkerSession


async def work(queue: Queue, process: int, index: int, pool: str | None, hold_s: float, hang: bool) -> None:
    caps = Capabilities(services=["echo"], pool=pool)
    session = await WorkerSession.open(queue, f"p{process}-w{index}", caps)
    idle_rounds = 0
    try:
        # Every worker of the test starts at once (the test pushes one token each once all printed `ready`), so they race.
        print("ready", flush=True)
        await queue.client.blpop(["test:go"], timeout=60)
        while True:
            claimed = await session.claim()
            if claimed is None:
                stats = await queue.stats()
                if not (stats.waiting or stats.active or stats.delayed or stats.limited):
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
            await asyncio.sleep(hold_s)
            try:
                await queue.complete(claimed.job.id, claimed.token, {"worker": session.worker_id})
            except LeaseLost:
                continue
    finally:
        await session.close()


async def main() -> None:
    url, process, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pool = None if sys.argv[4] == "-" else sys.argv[4]
    hold_s = int(sys.argv[5]) / 1000
    hang = "--hang" in sys.argv
    queue = await Queue.connect(
        url, settings=QueueSettings(lease_ms=1000, reaper_interval_ms=200), max_connections=workers + 8
    )
    try:
        await asyncio.gather(*(work(queue, process, i, pool, hold_s, hang) for i in range(workers)))
    finally:
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
