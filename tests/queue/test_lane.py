"""The lane (appliance/queue/scripts/lane.py): script calls made one at a time share one connection kept out of
the pool; a killed connection, a cancelled call and overlapping calls all keep every reply with its own call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from appliance.queue import DuplicateJob, Queue


@pytest.fixture
async def q(redis_url: str) -> AsyncIterator[Queue]:
    queue = await Queue.connect(redis_url, queue_name="lane")
    yield queue
    await queue.close()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.execute_command("CLIENT", "UNPAUSE")
    await client.aclose()


async def test_calls_one_at_a_time_use_one_connection(q: Queue, admin: aioredis.Redis) -> None:
    for _ in range(20):
        await q.submit({"service": "echo"})
    pool = q.client.connection_pool
    assert len(pool._in_use_connections) == 1  # the lane's, held between calls
    assert (await q.stats()).totals["submitted"] == 20


async def test_a_killed_connection_is_replaced(q: Queue, admin: aioredis.Redis) -> None:
    await q.submit({"service": "echo"})
    await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await q.submit({"service": "echo"})  # the lane's socket is dead: redis-py's path (with its retry) runs it
    await q.submit({"service": "echo"})  # and the lane took a fresh connection
    assert (await q.stats()).totals["submitted"] == 3


async def test_a_cancelled_call_leaves_no_reply_for_the_next(q: Queue, admin: aioredis.Redis) -> None:
    await q.submit({"service": "echo", "id": "taken"})
    await admin.execute_command(
        "CLIENT", "PAUSE", 2000, "WRITE"
    )  # holds scripts: the call waits for its reply
    pending = asyncio.create_task(q.submit({"service": "echo", "id": "cancelled"}))
    await asyncio.sleep(0.2)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await admin.execute_command("CLIENT", "UNPAUSE")
    # Had the cancelled call's reply (1, submitted) stayed on the connection, this call would read it.
    with pytest.raises(DuplicateJob):
        await q.submit({"service": "echo", "id": "taken"})


async def test_overlapping_calls_take_the_pool(q: Queue) -> None:
    jobs = await asyncio.gather(*(q.submit({"service": "echo"}) for _ in range(30)))
    assert len({job.id for job in jobs}) == 30
    assert (await q.stats()).totals["submitted"] == 30
    with pytest.raises(DuplicateJob):
        await q.submit({"service": "echo", "id": jobs[0].id})
