"""The event hub of an API process reads the queue's event stream only while someone follows a job there (SSE or
WebSocket): every API process would otherwise parse every event of the queue, submits included. A first
subscriber still gets every event from when it attached."""

from __future__ import annotations

import asyncio

from appliance.api.hub import EventHub
from appliance.queue import Queue


async def xrevranges(queue: Queue) -> int:
    stats = await queue.client.info("commandstats")
    return int(stats.get("cmdstat_xrevrange", {}).get("calls", 0))


async def test_an_idle_hub_reads_no_events_and_a_first_subscriber_misses_none(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    hub = EventHub(queue, block_ms=50)
    hub.start()
    try:
        for _ in range(200):  # the hub runs (its first look at where the stream ends)
            if await xrevranges(queue) >= 1:
                break
            await asyncio.sleep(0.05)
        early = [await queue.submit({"service": "echo"}) for _ in range(5)]
        # Until the hub has noted where the stream ends after those (two more idle turns), or a while.
        seen = await xrevranges(queue)
        for _ in range(200):
            if await xrevranges(queue) >= seen + 2:
                break
            await asyncio.sleep(0.05)
        assert hub.read == 0
        job = await queue.submit({"service": "echo"})
        sub = hub.attach({job.id, early[0].id})
        await queue.cancel(job.id)
        await queue.cancel(early[0].id)
        got: list[tuple[str, str]] = []
        while len(got) < 2:
            event = await asyncio.wait_for(sub.inbox.get(), 30)
            assert event is not None and event.kind is not None
            if event.kind.value == "cancelled":
                got.append((event.job, event.kind.value))
        assert got == [(job.id, "cancelled"), (early[0].id, "cancelled")]
        # The two cancellations, and the job's submit when it came after the hub's last idle turn.
        assert hub.read in (2, 3), hub.read
    finally:
        await hub.stop()
        await queue.close()
