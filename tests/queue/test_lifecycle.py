"""A job's life through the real scripts on a real Redis: submit, claim, progress, complete, fail, cancel."""

from __future__ import annotations

import asyncio
import re

import pytest

from appliance.queue import (
    Capabilities,
    DuplicateJob,
    InvalidJob,
    JobAlreadyFinished,
    JobNotFound,
    JobStatus,
    LeaseLost,
    PayloadTooLarge,
    Queue,
    ResultTooLarge,
    WorkerSession,
)
from tests.pubsub import json_messages

ECHO = Capabilities(services=["echo"])


async def test_submit_claim_progress_complete(queue: Queue) -> None:
    job = await queue.submit({"service": "echo", "payload": {"n": 1}})
    assert (await queue.get(job.id)).status is JobStatus.PENDING
    claimed = await queue.claim("w1", [job.shape])
    assert claimed is not None and claimed.job.id == job.id and claimed.attempt == 1
    assert claimed.job.payload == {"n": 1}
    got = await queue.get(job.id)
    assert got.status is JobStatus.CLAIMED and got.worker_id == "w1" and got.attempts == 1
    assert await queue.progress(job.id, claimed.token, 40, "sampling") is False
    got = await queue.get(job.id)
    assert got.status is JobStatus.RUNNING and got.progress == {"percent": 40.0, "message": "sampling"}
    await queue.complete(job.id, claimed.token, {"images": ["a.png"]})
    got = await queue.get(job.id)
    assert got.status is JobStatus.COMPLETED and got.result == {"images": ["a.png"]}
    assert got.finished_at is not None and got.claimed_at is not None
    assert await queue.claim("w1", [job.shape]) is None
    stats = await queue.stats()
    assert stats.totals["completed"] == 1 and stats.waiting == 0 and stats.active == 0


async def test_stale_or_wrong_token_is_rejected_everywhere(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    claimed = await queue.claim("w1", [job.shape])
    for call in (
        queue.complete(job.id, "not-the-token", {}),
        queue.progress(job.id, "not-the-token", 10),
        queue.fail(job.id, "not-the-token", "boom", retryable=True),
        queue.release(job.id, "not-the-token"),
    ):
        with pytest.raises(LeaseLost):
            await call
    await queue.complete(job.id, claimed.token, {"ok": 1})
    with pytest.raises(LeaseLost):  # completing twice: the lease is gone
        await queue.complete(job.id, claimed.token, {"ok": 2})
    assert (await queue.get(job.id)).result == {"ok": 1}


async def test_priority_first_then_fifo(queue: Queue) -> None:
    low = [await queue.submit({"service": "echo", "payload": {"i": i}}) for i in range(3)]
    high = await queue.submit({"service": "echo", "priority": 5})
    order = []
    for _ in range(4):
        claimed = await queue.claim("w", [high.shape])
        order.append(claimed.job.id)
    assert order == [high.id] + [j.id for j in low]


async def test_aging_bounds_starvation(make_queue) -> None:
    # With a 50 ms step, a priority-1 job submitted now ranks as if submitted 50 ms earlier: a priority-0 job
    # that has already waited longer than that goes first.
    q = await make_queue(priority_step_ms=50)
    old = await q.submit({"service": "echo"})
    await asyncio.sleep(0.2)
    newer_high = await q.submit({"service": "echo", "priority": 1})
    first = await q.claim("w", [old.shape])
    assert first.job.id == old.id
    assert (await q.claim("w", [old.shape])).job.id == newer_high.id


async def test_claim_takes_best_job_across_many_shapes(queue: Queue) -> None:
    worker = Capabilities(services=["echo"], tags=[f"t{i}" for i in range(40)], gpu_memory_gb=80)
    jobs = []
    for i in range(40):
        jobs.append(
            await queue.submit(
                {
                    "service": "echo",
                    "priority": i % 7,
                    "requirements": {"tags": [f"t{i}"], "gpu_memory_gb": i},
                }
            )
        )
    foreign = await queue.submit({"service": "echo", "priority": 100, "requirements": {"tags": ["zzz"]}})
    session = await WorkerSession.open(queue, "w-many", worker)
    try:
        assert len(session.shapes) == 40 and foreign.shape not in session.shapes
        expected = [j.id for j in sorted(jobs, key=lambda j: (-j.priority, jobs.index(j)))]
        got = [(await session.claim()).job.id for _ in range(40)]
        assert got == expected
        assert await session.claim() is None
        assert (await queue.get(foreign.id)).status is JobStatus.PENDING
    finally:
        await session.close()


async def test_a_job_deep_in_the_queue_is_not_starved(queue: Queue) -> None:
    # The original scanned the top 100 pending jobs: a specialised job at position 500 was invisible.
    for _ in range(500):
        await queue.submit({"service": "echo", "priority": 10})
    special = await queue.submit({"service": "echo", "requirements": {"tags": ["rare"]}})
    session = await WorkerSession.open(
        queue,
        "w-rare",
        Capabilities(
            services=["echo"], tags=["rare"], pool=None, workflow_id=None, customer_isolation="none"
        ),
    )
    try:
        # This worker can run both shapes; a worker that only has the rare shape gets it at once.
        only_rare = await queue.claim("w-only-rare", [special.shape])
        assert only_rare.job.id == special.id
    finally:
        await session.close()


async def test_retryable_failure_backs_off_then_dead_letters_with_history(make_queue) -> None:
    q = await make_queue(retry_base_ms=200, retry_max_ms=200, reaper_interval_ms=100)
    job = await q.submit({"service": "echo", "max_retries": 1})
    claimed = await q.claim("w", [job.shape])
    assert await q.fail(job.id, claimed.token, "HTTP 503", retryable=True) is JobStatus.PENDING
    got = await q.get(job.id)
    assert got.status is JobStatus.PENDING and got.next_attempt_at is not None
    assert await q.claim("w", [job.shape]) is None  # still in its backoff delay
    await asyncio.sleep(0.25)
    result = await q.reap(force=True)
    assert result.requeued == 1
    claimed = await q.claim("w", [job.shape])
    assert claimed.attempt == 2
    assert await q.fail(job.id, claimed.token, "HTTP 503 again", retryable=True) is JobStatus.DEAD
    got = await q.get(job.id)
    assert got.status is JobStatus.DEAD and got.attempts == 2
    assert [e["message"] for e in got.errors] == ["HTTP 503", "HTTP 503 again"]
    assert (await q.stats()).dead == 1


async def test_zero_delay_retry_goes_straight_back(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    claimed = await queue.claim("w", [job.shape])
    await queue.fail(job.id, claimed.token, "transient", retryable=True)
    again = await queue.claim("w", [job.shape])
    assert again.job.id == job.id and again.attempt == 2


async def test_permanent_failure_fails_at_once(queue: Queue) -> None:
    job = await queue.submit({"service": "echo", "max_retries": 5})
    claimed = await queue.claim("w", [job.shape])
    status = await queue.fail(
        job.id, claimed.token, "bad payload", retryable=False, details={"field": "prompt"}
    )
    assert status is JobStatus.FAILED
    got = await queue.get(job.id)
    assert got.status is JobStatus.FAILED and got.error == "bad payload"
    assert got.errors[0]["details"] == {"field": "prompt"} and got.errors[0]["kind"] == "permanent"


async def test_release_hands_back_without_counting_an_attempt(queue: Queue) -> None:
    first = await queue.submit({"service": "echo"})
    second = await queue.submit({"service": "echo"})
    claimed = await queue.claim("w", [first.shape])
    await queue.release(first.id, claimed.token, reason="drain")
    got = await queue.get(first.id)
    assert got.status is JobStatus.PENDING and got.attempts == 0
    again = await queue.claim("w2", [first.shape])
    assert again.job.id == first.id and again.attempt == 1  # kept its place ahead of `second`
    assert second.id != again.job.id


async def test_cancel_pending_and_running(queue: Queue) -> None:
    waiting = await queue.submit({"service": "echo"})
    running = await queue.submit({"service": "echo"})
    behind = await queue.submit({"service": "echo"})
    assert await queue.cancel(waiting.id) == "cancelled"
    assert (await queue.get(waiting.id)).status is JobStatus.CANCELLED
    session = await WorkerSession.open(queue, "w-c", ECHO)
    try:
        claimed = await session.claim()
        assert claimed.job.id == running.id
        assert await queue.cancel(running.id) == "requested"
        told = await asyncio.wait_for(session.cancel_requests.get(), 5)
        assert told == running.id
        assert await session.heartbeat({running.id: claimed.token}) == {running.id: "cancelled"}
        assert await queue.progress(running.id, claimed.token, 50) is True
        await queue.finish_cancelled(running.id, claimed.token)
        assert (await queue.get(running.id)).status is JobStatus.CANCELLED
        assert (await session.claim()).job.id == behind.id
    finally:
        await session.close()
    with pytest.raises(JobAlreadyFinished):
        await queue.cancel(waiting.id)
    with pytest.raises(JobNotFound):
        await queue.cancel("no-such-job")


async def test_a_failing_cancelled_job_ends_cancelled_not_retried(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    claimed = await queue.claim("w", [job.shape])
    await queue.cancel(job.id)
    assert await queue.fail(job.id, claimed.token, "interrupted", retryable=True) is JobStatus.CANCELLED


async def test_cancel_a_retry_delayed_job(make_queue) -> None:
    q = await make_queue(retry_base_ms=60_000, retry_max_ms=60_000)
    job = await q.submit({"service": "echo"})
    claimed = await q.claim("w", [job.shape])
    await q.fail(job.id, claimed.token, "later", retryable=True)
    assert await q.cancel(job.id) == "cancelled"
    assert (await q.stats()).delayed == 0


async def test_duplicate_id_is_rejected_and_the_first_job_kept(queue: Queue) -> None:
    await queue.submit({"id": "order-1", "service": "echo", "payload": {"v": 1}})
    with pytest.raises(DuplicateJob):
        await queue.submit({"id": "order-1", "service": "echo", "payload": {"v": 2}})
    assert (await queue.get("order-1")).payload == {"v": 1}


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"payload": {}}, "service"),
        ({"service": "echo", "priority": "high"}, "priority"),
        ({"service": "echo", "requirements": {"gpu_memory_gb": -1}}, "requirements.gpu_memory_gb"),
        ({"service": "echo", "requirements": {"colour": "red"}}, "requirements.colour"),
        ({"service": "echo", "max_retries": -1}, "max_retries"),
        ({"service": "echo", "id": "has space"}, "id"),
        ({"service": "echo", "timeout_s": 0}, "timeout_s"),
        # JSON has no NaN: stored as JSON it would silently become null.
        ({"service": "echo", "payload": {"x": float("nan")}}, "payload.x is not a finite number"),
        ({"service": "echo", "payload": {"a": [1, {"b": float("inf")}]}}, r"payload.a[1].b"),
    ],
)
async def test_bad_input_names_the_field_and_enqueues_nothing(queue: Queue, bad: dict, field: str) -> None:
    with pytest.raises(InvalidJob, match=re.escape(field)):
        await queue.submit(bad)
    with pytest.raises(InvalidJob):
        await queue.submit_many([{"service": "echo"}, bad])
    assert (await queue.stats()).totals.get("submitted", 0) == 0


@pytest.mark.parametrize("where", ["existing", "twice"])
async def test_submit_many_is_all_or_nothing(queue: Queue, where: str) -> None:
    # It used to enqueue the rest of the batch and raise, so the caller got no list and a retry double-submitted.
    await queue.submit({"id": "order-1", "service": "echo"})
    batch = [{"service": "echo", "payload": {"i": i}} for i in range(3)]
    batch.insert(1, {"id": "order-1" if where == "existing" else "order-2", "service": "echo"})
    if where == "twice":
        batch.append({"id": "order-2", "service": "echo"})
    with pytest.raises(DuplicateJob, match="nothing was submitted") as info:
        await queue.submit_many(batch)
    assert info.value.submitted == []
    stats = await queue.stats()
    assert stats.totals["submitted"] == 1 and stats.waiting == 1
    assert await queue.get("order-2") is None
    jobs = await queue.submit_many(batch[:1] + batch[2:4])  # the same batch without the offending id
    assert len(jobs) == 3 and (await queue.stats()).waiting == 4


async def test_submit_many_keeps_order(queue: Queue) -> None:
    jobs = await queue.submit_many([{"service": "echo", "payload": {"i": i}} for i in range(1200)])
    assert len({j.id for j in jobs}) == 1200
    first = await queue.claim("w", [jobs[0].shape])
    assert first.job.payload == {"i": 0}
    assert (await queue.stats()).waiting == 1199


async def test_unworkable_jobs_are_reported(queue: Queue) -> None:
    job = await queue.submit({"service": "comfyui", "requirements": {"gpu_memory_gb": 80}})
    small = await WorkerSession.open(queue, "w-small", Capabilities(services=["comfyui"], gpu_memory_gb=24))
    try:
        got = await queue.get(job.id)
        assert got.status is JobStatus.PENDING and got.unworkable
        stats = await queue.stats()
        assert stats.unworkable == 1
        big = await WorkerSession.open(queue, "w-big", Capabilities(services=["comfyui"], gpu_memory_gb=80))
        try:
            assert not (await queue.get(job.id)).unworkable
            assert (await queue.stats()).unworkable == 0
        finally:
            await big.close()
    finally:
        await small.close()


async def test_idle_worker_is_woken_by_a_matching_submit_not_by_others(queue: Queue) -> None:
    session = await WorkerSession.open(queue, "w-idle", ECHO)
    try:
        assert await session.claim() is None
        other = asyncio.create_task(session.wait_for_work(0.5))
        await queue.submit({"service": "comfyui"})  # not ours: no wake-up
        assert await other is False
        waiter = asyncio.create_task(session.wait_for_work(10))
        await asyncio.sleep(0.05)
        await queue.submit({"service": "echo"})
        assert await waiter is True
        assert await session.claim() is not None
    finally:
        await session.close()


async def test_a_worker_learns_new_shapes_it_can_serve(queue: Queue) -> None:
    session = await WorkerSession.open(queue, "w-new", Capabilities(services=["echo"], tags=["gpu"]))
    try:
        assert session.shapes == []
        waiter = asyncio.create_task(session.wait_for_work(10))
        job = await queue.submit({"service": "echo", "requirements": {"tags": ["gpu"]}})
        assert await waiter is True
        claimed = await session.claim()
        assert claimed is not None and claimed.job.id == job.id
    finally:
        await session.close()


async def test_expired_lease_is_requeued_and_the_old_token_fenced(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    first = await queue.claim("w-dead", [job.shape])
    assert (await queue.reap(force=True)).requeued == 0  # lease still valid
    await asyncio.sleep(1.1)
    result = await queue.reap(force=True)
    assert result.requeued == 1
    second = await queue.claim("w-alive", [job.shape])
    assert second.job.id == job.id and second.attempt == 2
    assert await queue.heartbeat("w-dead", {job.id: first.token}) == {job.id: "lost"}
    with pytest.raises(LeaseLost):
        await queue.complete(job.id, first.token, {"from": "zombie"})
    await queue.complete(job.id, second.token, {"from": "w-alive"})
    got = await queue.get(job.id)
    assert got.result == {"from": "w-alive"} and got.errors[0]["kind"] == "lease_expired"


async def test_heartbeat_keeps_a_lease_alive_past_its_first_deadline(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    claimed = await queue.claim("w", [job.shape])
    for _ in range(3):
        await asyncio.sleep(0.5)
        assert await queue.heartbeat("w", {job.id: claimed.token}) == {job.id: "ok"}
        assert (await queue.reap(force=True)).requeued == 0
    await queue.complete(job.id, claimed.token, None)


async def test_expired_lease_past_max_retries_goes_to_dead_letter(queue: Queue) -> None:
    job = await queue.submit({"service": "echo", "max_retries": 0})
    await queue.claim("w", [job.shape])
    await asyncio.sleep(1.1)
    assert (await queue.reap(force=True)).dead == 1
    assert (await queue.get(job.id)).status is JobStatus.DEAD


async def test_reaper_runs_once_per_interval(make_queue) -> None:
    q = await make_queue(reaper_interval_ms=60_000)
    assert (await q.reap()).ran is True
    assert (await q.reap()).ran is False
    assert (await q.reap(force=True)).ran is True


async def test_reap_says_when_the_next_lease_or_retry_falls_due(make_queue) -> None:
    # The server's clock decides; only bounds are checked, never how long anything took.
    q = await make_queue(lease_ms=60_000, reaper_interval_ms=100, retry_base_ms=30_000, retry_max_ms=30_000)
    assert (await q.reap(force=True)).next_in_ms is None  # nothing leased or delayed: nothing to wake for
    job = await q.submit({"service": "echo"})
    claimed = await q.claim("w", [job.shape])
    assert claimed is not None
    first = await q.reap(force=True)
    assert first.next_in_ms is not None and 0 < first.next_in_ms <= 60_000  # the lease's deadline
    # A retry due sooner than every lease comes first.
    other = await q.submit({"service": "echo", "id": "retry-me"})
    second = await q.claim("w", [other.shape])
    assert second is not None and second.job.id == other.id
    scheduled: list[int] = []
    q.on_retry_scheduled = scheduled.append
    assert await q.fail(other.id, second.token, "flaky", retryable=True) is JobStatus.PENDING
    assert len(scheduled) == 1 and 15_000 <= scheduled[0] <= 30_000  # equal jitter over the 30 s ceiling
    due = await q.reap(force=True)
    assert due.next_in_ms is not None and due.next_in_ms <= scheduled[0]


async def test_a_caller_turned_away_by_the_guard_learns_when_to_come_back(make_queue) -> None:
    q = await make_queue(lease_ms=1_000, reaper_interval_ms=60_000)
    job = await q.submit({"service": "echo"})
    await q.claim("w", [job.shape])
    assert (await q.reap()).ran is True
    turned_away = await q.reap()
    # Not before the guard frees (60 s), even though the lease falls due sooner.
    assert turned_away.ran is False and turned_away.next_in_ms is not None
    assert 1_000 < turned_away.next_in_ms <= 60_000


async def test_return_jobs_of_a_dead_worker(queue: Queue) -> None:
    a = await queue.submit({"service": "echo"})
    b = await queue.submit({"service": "echo"})
    await queue.claim("m1-gpu0", [a.shape])
    await queue.claim("m1-gpu1", [a.shape])
    assert await queue.jobs_of_worker("m1-gpu0") == [a.id]
    assert await queue.return_jobs_of_worker("m1-gpu0", "worker_failed") == 1
    got = await queue.get(a.id)
    assert got.status is JobStatus.PENDING and got.errors[-1]["kind"] == "worker_failed"
    assert (await queue.get(b.id)).status is JobStatus.CLAIMED


async def test_finished_records_expire_and_memory_returns_to_baseline(make_queue, aredis) -> None:
    q = await make_queue(result_ttl_s=1, events_maxlen=0)
    await q.reap(force=True)
    jobs = await q.submit_many([{"service": "echo", "payload": {"i": i}} for i in range(50)])
    for _ in jobs:
        claimed = await q.claim("w", [jobs[0].shape])
        await q.complete(claimed.job.id, claimed.token, {"ok": True})
    assert (await q.get(jobs[0].id)).status is JobStatus.COMPLETED
    await asyncio.sleep(1.1)
    assert (await q.reap(force=True)).records_dropped == 50
    assert await q.get(jobs[0].id) is None
    for column in q.keys.job_columns():
        assert await aredis.hlen(column) == 0, column
    assert await aredis.zcard(q.keys.done) == 0
    assert await aredis.zcard(q.keys.ready(jobs[0].shape)) == 0


async def test_events_on_stream_and_pubsub(queue: Queue, aredis) -> None:
    pubsub = aredis.pubsub()
    await pubsub.subscribe(
        "job_submitted", "job_claimed", "update_job_progress", "complete_job", "job_failed"
    )
    job = await queue.submit({"service": "echo"})
    claimed = await queue.claim("w", [job.shape])
    await queue.progress(job.id, claimed.token, 50, 'say "hi"')
    await queue.complete(job.id, claimed.token, {"x": 1})
    seen = await json_messages(pubsub, 4)
    await pubsub.aclose()
    assert [c for c, _ in seen] == ["job_submitted", "job_claimed", "update_job_progress", "complete_job"]
    assert all(e["job"] == job.id and e["queue"] == "default" for _, e in seen)
    assert seen[2][1]["progress"]["message"] == 'say "hi"'
    # The completion message names the job and the result's size, never the result: readers fetch the record.
    assert "result" not in seen[3][1] and seen[3][1]["result_bytes"] == str(len('{"x":1}'))
    entries = await aredis.xrange(queue.keys.events)
    assert [e[1][b"event"].decode() for e in entries] == ["submitted", "claimed", "progress", "completed"]


async def test_wait_returns_when_the_job_finishes(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    waiter = asyncio.create_task(queue.wait(job.id, timeout_s=10))
    claimed = await queue.claim("w", [job.shape])
    await queue.complete(job.id, claimed.token, {"done": True})
    assert (await waiter).status is JobStatus.COMPLETED
    with pytest.raises(TimeoutError):
        other = await queue.submit({"service": "echo"})
        await queue.wait(other.id, timeout_s=0.3)


async def test_heads_index_keeps_constant_time_lookups(queue: Queue, aredis) -> None:
    # In the compact listpack encoding each ZMSCORE lookup in claim.lua would scan every shape.
    await queue.submit({"service": "echo"})
    assert (await aredis.object("encoding", queue.keys.heads)) == b"skiplist"
    job = (await queue.list_jobs())[0]
    claimed = await queue.claim("w", [job.shape])
    await queue.complete(job.id, claimed.token, None)
    assert await aredis.exists(queue.keys.heads) == 1  # the sentinel keeps the key (and its encoding)


async def test_sizes_over_the_limits_are_refused_naming_the_limit(make_queue) -> None:
    q = await make_queue(max_payload_bytes=4096, max_result_bytes=2048)
    with pytest.raises(PayloadTooLarge, match=r"over the limit queue\.max_payload_bytes=4096"):
        await q.submit({"service": "echo", "payload": {"blob": "x" * 5000}})
    # A batch is checked whole before anything is sent: the small job before the big one is not enqueued.
    with pytest.raises(PayloadTooLarge):
        await q.submit_many([{"service": "echo"}, {"service": "echo", "payload": {"blob": "x" * 5000}}])
    assert (await q.stats()).waiting == 0
    job = await q.submit({"service": "echo"})
    claimed = await q.claim("w", [job.shape])
    with pytest.raises(ResultTooLarge, match=r"is \d+ bytes, over the limit queue\.max_result_bytes=2048"):
        await q.complete(job.id, claimed.token, {"blob": "y" * 3000})
    assert (await q.get(job.id)).status is JobStatus.CLAIMED  # nothing written: the worker still holds it
    await q.complete(job.id, claimed.token, {"ok": True})
    assert (await q.get(job.id)).result == {"ok": True}


async def test_per_queue_channels_carry_only_their_queue(make_queue, aredis) -> None:
    mine = await make_queue(channels="queue")
    pubsub = aredis.pubsub()
    await pubsub.psubscribe("*")
    job = await mine.submit({"service": "echo"})
    claimed = await mine.claim("w", [job.shape])
    await mine.complete(job.id, claimed.token, {"x": 1})
    channels = []
    async with asyncio.timeout(10):
        while "appliance:{default}:complete_job" not in channels:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                channels.append(message["channel"].decode())
    await pubsub.aclose()
    assert not {"job_submitted", "job_claimed", "complete_job"} & set(channels)
    assert all(c.startswith("appliance:{default}:") for c in channels), channels
    waiter = asyncio.create_task(mine.wait(job.id, timeout_s=10))
    assert (await waiter).status is JobStatus.COMPLETED
