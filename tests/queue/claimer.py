"""A real worker process for the queue's concurrency, crash and limits tests (the real client and scripts, not a mock).

    python tests/queue/claimer.py URL PROCESS WORKERS [--pool POOL] [--hold-ms N] [--barrier] [--hang]

Runs WORKERS async workers with ids `p<PROCESS>-w<i>`; each claims one job at a time, holds it `--hold-ms` (so
leases overlap and a limit is really tested), completes it with its worker id and records the completion in the
Redis list `test:completions`. Without `--pool` each worker serves 4 of 8 tag shapes; with it, untagged jobs of
that pool. With `--barrier` each worker prints `ready` and waits for a token the test pushes onto `test:go`, so
all of them race from the first claim. With `--hang`, the first claimed job is never finished and its id printed
(the test kill -9s the process). Exits when nothing is waiting, leased, delayed or held by a limit.
"""

from __future__ import annotations

import argparse
import asyncio

from appliance.queue import Capabilities, LeaseLost, Queue, QueueSettings, WorkerSession

TAGS = [f"t{i}" for i in range(8)]


def capabilities(options: argparse.Namespace, worker: int) -> Capabilities:
    if options.pool is not None:
        return Capabilities(services=["echo"], pool=None if options.pool == "-" else options.pool)
    # Each worker serves 4 of the 8 tag shapes; together every shape is covered many times over.
    start = (options.process * 3 + worker) % len(TAGS)
    return Capabilities(services=["echo"], tags=[TAGS[(start + i) % len(TAGS)] for i in range(4)])


async def nothing_left(queue: Queue) -> bool:
    stats = await queue.stats()
    return not (stats.waiting or stats.active or stats.delayed or stats.limited)


async def work(queue: Queue, options: argparse.Namespace, index: int) -> None:
    session = await WorkerSession.open(queue, f"p{options.process}-w{index}", capabilities(options, index))
    idle_rounds = 0
    try:
        if options.barrier:
            print("ready", flush=True)
            await queue.client.blpop(["test:go"], timeout=60)
        while True:
            claimed = await session.claim()
            if claimed is None:
                idle_rounds = idle_rounds + 1 if await nothing_left(queue) else 0
                if idle_rounds > 3:
                    return
                await queue.reap()
                await session.wait_for_work(0.2)
                continue
            idle_rounds = 0
            if options.hang:
                print(f"claimed {claimed.job.id}", flush=True)
                await asyncio.sleep(3600)
            await asyncio.sleep(options.hold_ms / 1000)
            try:
                await queue.complete(claimed.job.id, claimed.token, {"worker": session.worker_id})
            except LeaseLost:
                continue
            await queue.client.rpush("test:completions", claimed.job.id)
    finally:
        await session.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("process", type=int)
    parser.add_argument("workers", type=int)
    parser.add_argument(
        "--pool", help="serve untagged jobs of this pool ('-' for none) instead of tag shapes"
    )
    parser.add_argument("--hold-ms", type=int, default=0)
    parser.add_argument("--barrier", action="store_true")
    parser.add_argument("--hang", action="store_true")
    options = parser.parse_args()
    queue = await Queue.connect(
        options.url,
        settings=QueueSettings(lease_ms=1000, reaper_interval_ms=200),
        max_connections=options.workers + 8,
    )
    try:
        await asyncio.gather(*(work(queue, options, i) for i in range(options.workers)))
    finally:
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
