"""Many processes, many async workers, one queue: every job completes exactly once, even through kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

from appliance.queue import JobStatus, Queue, QueueSettings

CLAIMER = str(Path(__file__).with_name("claimer.py"))
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


async def test_four_processes_claim_10k_mixed_jobs_exactly_once(redis_url: str, aredis) -> None:
    queue = await Queue.connect(redis_url)
    try:
        specs = [
            {
                "service": "echo",
                "priority": i % 3,
                "requirements": {"tags": [f"t{i % 8}"]},
                "payload": {"i": i},
            }
            for i in range(10_000)
        ]
        jobs = await queue.submit_many(specs)
        assert len({j.shape for j in jobs}) == 8
        procs = [
            await asyncio.create_subprocess_exec(sys.executable, CLAIMER, redis_url, str(p), "8", env=ENV)
            for p in range(4)
        ]
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 300)
        assert codes == [0, 0, 0, 0]
        completions = [c.decode() for c in await aredis.lrange("test:completions", 0, -1)]
        counts = Counter(completions)
        assert len(counts) == 10_000 and max(counts.values()) == 1
        assert set(counts) == {j.id for j in jobs}
        stats = await queue.stats()
        assert stats.totals["completed"] == 10_000 and stats.waiting == 0 and stats.active == 0
        # Every process did real work: claims were spread, not serialised behind one worker.
        sample = [await queue.get(j.id) for j in jobs[::500]]
        assert all(j.status is JobStatus.COMPLETED for j in sample)
        assert len({j.result["worker"].split("-")[0] for j in sample}) > 1
    finally:
        await queue.close()


async def test_kill_9_mid_job_is_reclaimed_and_completed_once(redis_url: str, aredis) -> None:
    queue = await Queue.connect(redis_url, settings=QueueSettings(lease_ms=1000))
    try:
        # t3 is served by both the doomed process (t0-t3) and the rescuer (t3-t7).
        job = await queue.submit({"service": "echo", "requirements": {"tags": ["t3"]}})
        doomed = await asyncio.create_subprocess_exec(
            sys.executable, CLAIMER, redis_url, "0", "1", "--hang", env=ENV, stdout=asyncio.subprocess.PIPE
        )
        line = await asyncio.wait_for(doomed.stdout.readline(), 30)
        assert line.decode().strip() == f"claimed {job.id}"
        assert (await queue.get(job.id)).status is JobStatus.CLAIMED
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        rescuer = await asyncio.create_subprocess_exec(sys.executable, CLAIMER, redis_url, "1", "2", env=ENV)
        assert await asyncio.wait_for(rescuer.wait(), 60) == 0
        done = await queue.get(job.id)
        assert done.status is JobStatus.COMPLETED and done.attempts == 2
        assert done.result["worker"].startswith("p1-")
        assert done.errors[0]["kind"] == "lease_expired"
        assert [c.decode() for c in await aredis.lrange("test:completions", 0, -1)] == [job.id]
    finally:
        await queue.close()
