"""What `job get/list/wait` read stays true and readable: error history JSON, stale fields, odd records."""

from __future__ import annotations

import asyncio
import json

import pytest

from appliance.queue import JobStatus, Queue

#: A worker id the config now refuses, as the Python API (or an older version) could still write it.
ODD_WORKER = 'm"1\\-gpu0'


async def test_error_history_is_valid_json_whatever_the_worker_id(queue: Queue) -> None:
    # release.lua and requeue.lua used to build the record by concatenation: a '"' made the history invalid
    # JSON and every `job get` of the job crashed for a day.
    returned = await queue.submit({"service": "echo"})
    expired = await queue.submit({"service": "echo"})
    await queue.claim(ODD_WORKER, [returned.shape])
    await queue.claim(ODD_WORKER, [expired.shape])
    assert await queue.return_jobs_of_worker(ODD_WORKER, "worker_failed") == 2
    for job_id in (returned.id, expired.id):
        raw = await queue.client.hget(queue.keys.errors, job_id)
        (record,) = json.loads(raw)
        assert record["worker"] == ODD_WORKER and record["kind"] == "worker_failed"
        assert record["message"] == f"worker {ODD_WORKER} stopped (worker_failed)"
    again = await queue.claim(ODD_WORKER, [expired.shape])
    await asyncio.sleep(1.1)
    assert (await queue.reap(force=True)).requeued == 1
    raw = await queue.client.hget(queue.keys.errors, again.job.id)
    assert [e["kind"] for e in json.loads(raw)] == ["worker_failed", "lease_expired"]
    got = await queue.get(again.job.id)
    assert got.errors[-1]["worker"] == ODD_WORKER and got.status is JobStatus.PENDING


async def test_get_and_list_survive_odd_records(queue: Queue) -> None:
    # Records written before ids were validated (a '|' in a worker id), or damaged by hand, must show what
    # can be read instead of crashing `job get/list/wait` ("too many values to unpack").
    running = await queue.submit({"service": "echo", "payload": {"n": 1}})
    finished = await queue.submit({"service": "echo"})
    k, c = queue.keys, queue.client
    await c.hset(k.state, running.id, "running")
    await c.hset(k.owner, running.id, "tok.1|m|1-gpu0|1700000000000")
    await c.hset(k.progress, running.id, "{not json")
    await c.hset(k.state, finished.id, "failed")
    await c.hset(k.info, finished.id, "m|1-gpu0|1700000000000|1700000001000")
    await c.hset(k.errors, finished.id, '[{"message":"worker m"1 stopped"}]')
    await c.hset(k.results, finished.id, "NaN-ish garbage")
    got = await queue.get(running.id)
    assert got.worker_id == "m|1-gpu0" and got.claimed_at is not None and got.progress is None
    assert got.payload == {"n": 1}
    done = await queue.get(finished.id)
    assert done.worker_id == "m|1-gpu0" and done.finished_at is not None and done.errors == []
    assert done.result == "NaN-ish garbage"
    await c.hset(k.spec, finished.id, '{"id": "x", "service": "echo", "priority": "high"}')
    assert (await queue.get(finished.id)).priority == 0  # the bad field falls back to its default
    assert {j.id for j in await queue.list_jobs()} == {running.id, finished.id}
    assert await queue.jobs_of_worker("m|1-gpu0") == [running.id]


async def test_a_completed_job_does_not_keep_an_earlier_attempts_error(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    first = await queue.claim("w", [job.shape])
    assert await queue.fail(job.id, first.token, "boom", retryable=True) is JobStatus.PENDING
    assert (await queue.get(job.id)).error == "boom"  # waiting for its retry: the error says why
    await asyncio.sleep(1.1)
    await queue.reap(force=True)
    second = await queue.claim("w", [job.shape])
    await queue.complete(job.id, second.token, {"ok": True})
    got = await queue.get(job.id)
    assert got.status is JobStatus.COMPLETED and got.error is None
    assert [e["message"] for e in got.errors] == ["boom"]  # the history stays


@pytest.mark.parametrize("how", ["release", "worker_failed", "lease_expired", "retry"])
async def test_a_job_back_in_line_does_not_keep_its_old_progress(queue: Queue, how: str) -> None:
    job = await queue.submit({"service": "echo"})
    claimed = await queue.claim("w", [job.shape])
    await queue.progress(job.id, claimed.token, 70, "sampling")
    if how == "release":
        await queue.release(job.id, claimed.token)
    elif how == "worker_failed":
        assert await queue.return_jobs_of_worker("w") == 1
    elif how == "lease_expired":
        await asyncio.sleep(1.1)
        assert (await queue.reap(force=True)).requeued == 1
    else:
        await queue.fail(job.id, claimed.token, "flaky", retryable=True)
    got = await queue.get(job.id)
    assert got.status is JobStatus.PENDING and got.progress is None


async def test_events_stay_valid_json_whatever_the_worker_id(queue: Queue) -> None:
    # The pub/sub messages were concatenated too: a '"' in a worker id made them invalid JSON.
    pubsub = queue.client.pubsub()
    await pubsub.subscribe("job_claimed")
    try:
        job = await queue.submit({"service": "echo"})
        await queue.claim(ODD_WORKER, [job.shape])
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)) is None:
            pass
    finally:
        await pubsub.aclose()
    event = json.loads(message["data"])
    assert event["worker"] == ODD_WORKER and event["job"] == job.id and event["event"] == "claimed"
