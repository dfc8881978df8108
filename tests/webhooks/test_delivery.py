"""Every event of a job reaches a real receiver, signed (verified with the standardwebhooks package)."""

from __future__ import annotations

from appliance.queue import Queue
from appliance.webhooks import EventType, WebhookRequest
from tests.webhooks.conftest import delivering, eventually, fast_settings
from tests.webhooks.receiver import Receiver

ALL = [EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED, EventType.PROGRESS]


async def test_every_event_is_delivered_and_verified(queue: Queue, receiver: Receiver) -> None:
    async with delivering(queue, fast_settings()) as webhooks:
        receiver.secret = await webhooks.secret("acme")
        done = await queue.submit({"service": "echo", "payload": {"n": 1}})
        failed = await queue.submit({"service": "echo", "max_retries": 0})
        cancelled = await queue.submit({"service": "echo"})
        for job in (done, failed, cancelled):
            await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url, events=ALL))
        claimed = await queue.claim("w1", [done.shape])
        assert claimed is not None and claimed.job.id == done.id
        await queue.progress(done.id, claimed.token, 50, "half")
        await queue.complete(done.id, claimed.token, {"images": ["a.png"]})
        claimed = await queue.claim("w1", [failed.shape])
        assert claimed is not None and claimed.job.id == failed.id
        await queue.fail(failed.id, claimed.token, "boom", retryable=False)
        await queue.cancel(cancelled.id)
        await eventually(lambda: len(receiver.unique()) >= 4, "four events")
    by_type = {r.type: r for r in receiver.unique().values()}
    assert set(by_type) == {"job.progress", "job.completed", "job.failed", "job.cancelled"}
    assert by_type["job.completed"].body["data"]["result"] == {"images": ["a.png"]}
    assert by_type["job.completed"].body["data"]["id"] == done.id
    assert by_type["job.progress"].body["data"]["progress"]["percent"] == 50.0
    assert by_type["job.failed"].body["data"]["error"] == "boom"
    assert by_type["job.cancelled"].body["data"]["status"] == "cancelled"
    assert receiver.refused == []


async def test_dead_lettered_job_is_reported_failed(queue: Queue, receiver: Receiver) -> None:
    """Out of retries (the queue's `dead` event) is a job.failed too; subscribers of job.completed only get
    nothing, and their registration still ends."""
    async with delivering(queue, fast_settings()) as webhooks:
        receiver.secret = await webhooks.secret("acme")
        dead = await queue.submit({"service": "echo", "max_retries": 0})
        quiet = await queue.submit({"service": "echo", "max_retries": 0})
        await webhooks.register("acme", dead.id, WebhookRequest(url=receiver.url))
        await webhooks.register(
            "acme", quiet.id, WebhookRequest(url=receiver.url, events=[EventType.COMPLETED])
        )
        for job in (dead, quiet):
            claimed = await queue.claim("w1", [job.shape])
            assert claimed is not None
            await queue.fail(job.id, claimed.token, "out of memory", retryable=True)
        await eventually(lambda: len(receiver.unique()) == 1, "the dead job's event")

        async def ended() -> bool:
            return await queue.client.hlen(webhooks.keys.hooks) == 0

        await eventually(ended, "both registrations ended")
    (got,) = receiver.unique().values()
    assert got.type == "job.failed" and got.body["data"]["id"] == dead.id
    assert got.body["data"]["status"] == "dead" and got.body["data"]["error"] == "out of memory"


async def test_big_result_is_left_out_of_the_body(queue: Queue, receiver: Receiver) -> None:
    async with delivering(queue, fast_settings(max_result_bytes=100)) as webhooks:
        receiver.secret = await webhooks.secret("acme")
        small, big = [await queue.submit({"service": "echo"}) for _ in range(2)]
        for job, result in ((small, {"n": 1}), (big, {"blob": "x" * 500})):
            await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
            claimed = await queue.claim("w1", [job.shape])
            assert claimed is not None
            await queue.complete(job.id, claimed.token, result)
        await eventually(lambda: len(receiver.unique()) == 2, "both events")
    data = {r.body["data"]["id"]: r.body["data"] for r in receiver.unique().values()}
    assert data[small.id]["result"] == {"n": 1} and "result_omitted" not in data[small.id]
    assert data[big.id]["result_omitted"] is True and "result" not in data[big.id]
