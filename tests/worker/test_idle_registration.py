"""An `appliance worker` that runs out of work registers as idle with its last completion: one command (issue 14:
an idle fleet costs submit + claim + completion per job). Real worker process, real Redis, MONITOR."""

from __future__ import annotations

import signal

from appliance.localredis import LocalRedis
from appliance.queue import JobStatus
from tests.queue.test_wake import monitored, script_calls
from tests.worker.test_worker_process import MACHINE, Harness, eventually, job_in

WORKER = f"{MACHINE}-echo0"


async def test_an_idle_worker_costs_a_job_a_claim_and_one_call_that_completes_it_and_registers(
    harness: Harness, redis_server: LocalRedis
) -> None:
    # Before: the worker's turn after the job sent idle.lua, then complete.lua. Now finish_claim.lua completes
    # the job, finds nothing and registers the worker as idle in the same call.
    q = harness.queue
    assert q is not None
    # On a fresh server the first call would also send SCRIPT LOAD.
    for name in ("claim", "finish_claim_quiet"):
        await q.client.script_load(q.scripts.sources[name])
    worker = harness.start("--connector", "echo", "--index", "0", "--concurrency", "1")
    await worker.ready()
    first = await q.submit({"service": "echo"})  # the shape appears: the worker looks and takes it
    await job_in(q, first.id, JobStatus.COMPLETED)

    async def registered() -> bool:
        return await q.client.hget(q.keys.waiting, WORKER) is not None

    await eventually(registered, "the worker registered as idle")
    async with monitored(redis_server.port) as lines:
        job = await q.submit({"service": "echo"})
        await job_in(q, job.id, JobStatus.COMPLETED)
        await eventually(registered, "the worker registered as idle again")
    # The scripts called (the test's own reads and the worker's status record are plain commands), but for the
    # timers' (heartbeat, reaper), which come whenever they are due.
    calls = [c for c in script_calls(lines) if c in q.scripts.sources and c not in ("heartbeat", "reap")]
    assert calls == ["submit", "claim", "finish_claim_quiet"], script_calls(lines)
    # Stopping deregisters it: no wake-up is spent on a worker that is gone.
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    assert await q.client.hget(q.keys.waiting, WORKER) is None
    assert await q.client.zscore(q.keys.idle(job.shape), WORKER) is None
