"""A real worker process of idle sessions, for the wake-up tests (the real client, scripts and hub; no mocks).

    python tests/queue/idler.py URL PROCESS_INDEX SESSIONS [--classes N] [--hold]

Opens SESSIONS sessions on one Queue (so they share the process's wake hub). With --classes N, session i serves
the tags t(i%N) and t(i%N+1) of N+1 tags (N worker classes with overlapping shapes); else every session serves
plain echo jobs. Each session claims, records `worker job` in the list `test:claims` and completes the job; with
--hold it keeps its first job and records the cancel requests it gets (`worker|job` in `test:cancels`). Sessions
wait for wake-ups with no timeout that matters (an hour): a job that wakes no one is never claimed. Runs until
SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from redis.exceptions import ConnectionError as RedisConnectionError

from appliance.queue import Capabilities, Queue, WorkerSession


def capabilities(index: int, classes: int) -> Capabilities:
    if not classes:
        return Capabilities(services=["echo"])
    first = index % classes
    return Capabilities(services=["echo"], tags=[f"t{first}", f"t{first + 1}"])


async def work(session: WorkerSession, hold: bool) -> None:
    client = session.queue.client
    while True:
        try:
            claimed = await session.claim()
        except (RedisConnectionError, OSError):  # Redis restarting (the test restarts it)
            await asyncio.sleep(0.1)
            continue
        if claimed is None:
            await session.wait_for_work(3600)
            continue
        await client.rpush("test:claims", f"{session.worker_id} {claimed.job.id}")
        if hold:
            while True:
                job_id = await session.cancel_requests.get()
                await client.rpush("test:cancels", f"{session.worker_id}|{job_id}")
        await session.queue.complete(claimed.job.id, claimed.token, {"by": session.worker_id})


async def main() -> None:
    url, process, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    classes = int(sys.argv[sys.argv.index("--classes") + 1]) if "--classes" in sys.argv else 0
    hold = "--hold" in sys.argv
    queue = await Queue.connect(url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sessions = [
        await WorkerSession.open(queue, f"p{process}-w{i}", capabilities(i, classes)) for i in range(count)
    ]
    tasks = [asyncio.create_task(work(s, hold)) for s in sessions]
    await stop.wait()
    for task in tasks:
        task.cancel()
    for session in sessions:
        await session.close()
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
