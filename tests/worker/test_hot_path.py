"""The worker's per-job cost, counted in what it asks of Redis and writes to its log (issue 14), through the real
`appliance worker` process. Counts, never times: the figures live in bench/throughput.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from appliance.queue import JobSpec, JobStatus, Queue
from tests.worker.test_worker_process import MACHINE, Harness, eventually


async def submit_echo_jobs(queue: Queue, count: int) -> list[str]:
    jobs = await queue.submit_many([JobSpec(service="echo", payload={"n": i}) for i in range(count)])
    return [job.id for job in jobs]


async def all_completed(queue: Queue, count: int) -> None:
    async def check() -> bool:
        return int(await queue.client.hget(queue.keys.counts, "completed") or 0) >= count

    await eventually(check, f"{count} jobs completed")


async def command_calls(queue: Queue, command: str) -> int:
    stats = await queue.client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@contextlib.asynccontextmanager
async def key_writes(queue: Queue, key: str) -> AsyncIterator[list[str]]:
    """Every write to `key` while inside, from Redis's keyspace notifications (whoever makes them)."""
    await queue.client.config_set("notify-keyspace-events", "Kh")
    pubsub = queue.client.pubsub()
    await pubsub.subscribe(f"__keyspace@0__:{key}")
    seen: list[str] = []

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                seen.append(str(message["data"]))

    task = asyncio.create_task(listen())
    try:
        yield seen
        await asyncio.sleep(0.3)  # the last notifications
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await queue.client.config_set("notify-keyspace-events", "")


async def test_completions_ride_with_claims_instead_of_one_call_per_job(harness: Harness) -> None:
    # Before: every finished job sent its own complete.lua call (40 jobs, 40 calls). Now the claim loop carries
    # the completions that are waiting with its next claim, one complete.lua call for all of them.
    q = harness.queue
    assert q is not None
    await submit_echo_jobs(q, 40)
    await q.client.config_resetstat()
    worker = harness.start("--connector", "echo", "--index", "0", "--concurrency", "4")
    await worker.ready()
    await all_completed(q, 40)
    # complete.lua is the only script here that ZREMs (its leases; claim's one more when the shape empties).
    complete_calls = await command_calls(q, "zrem") - 1
    assert 0 < complete_calls <= 20, complete_calls
    for job_id in (await q.client.hkeys(q.keys.state))[:5]:
        job = await q.get(job_id)
        assert job is not None and job.status is JobStatus.COMPLETED and job.attempts == 1


async def test_a_one_slot_worker_makes_one_script_call_per_job(harness: Harness) -> None:
    # Before: each round trip of a one-slot worker was two scripts (complete.lua and claim.lua, pipelined): 2 per
    # job. Now finish_claim.lua completes the finished job and claims the next in one call. (The rest: the first
    # claim, the heartbeat, the reaper's passes and the idle registration at the end.)
    q = harness.queue
    assert q is not None
    await submit_echo_jobs(q, 40)
    await q.client.config_resetstat()
    worker = harness.start("--connector", "echo", "--index", "0", "--concurrency", "1")
    await worker.ready()
    await all_completed(q, 40)
    scripts = await command_calls(q, "evalsha") + await command_calls(q, "fcall")
    assert 40 <= scripts <= 56, scripts


async def test_a_busy_worker_writes_its_status_record_about_once_a_second_not_per_job(
    harness: Harness,
) -> None:
    # Before: every claim and completion changed the record's job list, and each change was written at once
    # (about one HSET per 5 jobs). Now only a change of state goes out at once; which jobs run, like progress,
    # at most once a second.
    q = harness.queue
    assert q is not None
    await submit_echo_jobs(q, 400)
    async with key_writes(q, q.keys.worker_status) as writes:
        worker = harness.start("--connector", "echo", "--index", "0", "--concurrency", "4")
        await worker.ready()
        await all_completed(q, 400)
    assert writes, "the status record was never written"
    assert len(writes) <= 12, len(writes)
    await worker.status("idle, 400 jobs done")  # and the end state is still published


async def test_a_worker_at_info_writes_no_line_per_completed_job(harness: Harness) -> None:
    # Before: two INFO lines per job ("claimed ...", "completed after ..."): formatting and writing them cost a
    # short job more than its work, and journald drops a unit's lines past its rate limit. Failures still log.
    q = harness.queue
    assert q is not None
    ids = await submit_echo_jobs(q, 5)
    failing = await q.submit(JobSpec(service="echo", payload={"fail": "permanent"}))
    worker = harness.start("--connector", "echo", "--index", "0")  # the default level of services: INFO
    await worker.ready()
    await all_completed(q, 5)
    await worker.logged(f"job {failing.id}: attempt 1 failed")
    assert not [job_id for job_id in ids if job_id in worker.log], worker.log
    assert f"worker {MACHINE}-echo0 ready" in worker.log


async def test_completions_waiting_together_go_in_one_call_and_a_lost_lease_fails_alone(
    redis_url: str,
) -> None:
    # The drain's path (no claim loop carries them): the completions waiting at once share one complete.lua call;
    # the one whose lease is lost is refused by its fencing token and the others are written.
    from appliance.queue import Capabilities, WorkerSession
    from appliance.worker.leases import Lease, OutcomeWriter
    from appliance.worker.outcome import decide
    from appliance.worker.redislink import RedisLink

    queue = await Queue.connect(redis_url)
    await submit_echo_jobs(queue, 3)
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    try:
        claimed = await session.claim_many(3)
        assert len(claimed) == 3
        leases = [Lease(c, timeout_s=60) for c in claimed]
        await queue.complete(leases[1].job_id, leases[1].token, {"first": True})  # its lease ends here
        await queue.client.config_resetstat()
        writer = OutcomeWriter(queue, RedisLink())
        written = await asyncio.gather(
            *(writer.write(lease, decide({"n": i}, None, None)) for i, lease in enumerate(leases))
        )
        assert written == [True, False, True]
        assert await command_calls(queue, "zrem") == 1  # one complete.lua call for the three
        results = [(await queue.get(lease.job_id)).result for lease in leases]  # type: ignore[union-attr]
        assert results == [{"n": 0}, {"first": True}, {"n": 2}]
        assert int(await queue.client.hget(queue.keys.counts, "completed")) == 3
    finally:
        await session.close()
        await queue.close()
