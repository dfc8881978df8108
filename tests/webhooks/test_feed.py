"""The feed survives an API process that died between reading events and storing their deliveries: another
process takes the unacknowledged entries over and the events are delivered, once each."""

from __future__ import annotations

import pytest

from appliance.queue import Queue
from appliance.webhooks import WebhookRequest, Webhooks
from appliance.webhooks.keys import GROUP
from tests.webhooks.conftest import delivering, eventually, fast_settings
from tests.webhooks.receiver import Receiver


async def test_entries_read_by_a_dead_consumer_are_taken_over(queue: Queue, receiver: Receiver) -> None:
    webhooks = await Webhooks.open(queue, fast_settings())
    receiver.secret = await webhooks.secret("acme")
    jobs = [await queue.submit({"service": "echo"}) for _ in range(3)]
    for job in jobs:
        await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
        claimed = await queue.claim("w1", [job.shape])
        assert claimed is not None
        await queue.complete(job.id, claimed.token, job.id)
    # A process that read every entry and died before storing anything or acknowledging.
    read = await queue.client.xreadgroup(GROUP, "dead-process", {queue.keys.events: ">"}, count=1000)
    assert sum(len(rows) for _s, rows in read) >= 3
    assert (await queue.client.xpending(queue.keys.events, GROUP))["pending"] >= 3
    async with delivering(queue, fast_settings()) as live:
        live.feed.claim_idle_ms = 1  # what a process does after webhooks' 30 s, at once here
        await eventually(lambda: len(receiver.unique()) == 3, "the taken-over events")
    assert sorted(r.body["data"]["result"] for r in receiver.unique().values()) == sorted(j.id for j in jobs)
    assert (await queue.client.xpending(queue.keys.events, GROUP))["pending"] == 0
    await webhooks.close()


async def test_a_stream_trimmed_past_the_group_is_reported(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    """Events trimmed away before any API process read them are lost to webhooks: said once, at start."""
    webhooks = await Webhooks.open(queue, fast_settings())
    await queue.submit({"service": "echo"})
    await webhooks.feed.check_retention()
    assert "trimmed" not in caplog.text  # the group is at the stream's end: nothing lost
    await queue.client.xgroup_setid(queue.keys.events, GROUP, "1-0")  # as if it had read nothing for long
    await webhooks.feed.check_retention()
    assert "trimmed past what webhooks had read" in caplog.text
    await webhooks.close()


async def test_a_round_trips_batch_entry_gives_each_job_its_webhook_once(
    queue: Queue, receiver: Receiver
) -> None:
    # A worker's round trip writes its completions as ONE stream entry (issue 14): the feed hands on each of its
    # events, acknowledges the entry after all of them, and a member that takes the entry over from a dead one
    # handles all of them too.
    webhooks = await Webhooks.open(queue, fast_settings())
    receiver.secret = await webhooks.secret("acme")

    async def batch() -> list[str]:
        jobs = await queue.submit_many([{"service": "echo", "payload": {"n": n}} for n in range(3)])
        for job in jobs:
            await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
        _, leased = await queue.finish_and_claim([], "w", [jobs[0].shape], 3)
        codes, _ = await queue.finish_and_claim([(c.job.id, c.token, c.job.id) for c in leased], "w", [], 3)
        assert codes == [1, 1, 1]
        return [j.id for j in jobs]

    first = await batch()
    read = await queue.client.xreadgroup(GROUP, "dead-process", {queue.keys.events: ">"}, count=1000)
    kinds = [f["event"] for _s, rows in read for _i, f in rows]
    assert kinds.count("completed") == 1 and kinds.count("claimed") == 1  # one entry per kind
    async with delivering(queue, fast_settings()) as live:
        live.feed.claim_idle_ms = 1  # what a process does after webhooks' 30 s, at once here
        await eventually(lambda: len(receiver.unique()) == 3, "the taken-over batch's webhooks")
        second = await batch()  # read by the live member
        await eventually(lambda: len(receiver.unique()) == 6, "the live batch's webhooks")
        await eventually(lambda: _pending(queue), "every entry acknowledged")
    results = sorted(r.body["data"]["result"] for r in receiver.received)
    assert results == sorted(first + second)  # each once, none twice
    await webhooks.close()


async def _pending(queue: Queue) -> bool:
    return (await queue.client.xpending(queue.keys.events, GROUP))["pending"] == 0
