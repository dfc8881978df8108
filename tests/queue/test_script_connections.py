"""The EVALSHA fast path (`evalsha` in appliance/queue/scripts/evalsha.py) under what can go wrong with a
connection it reuses: a connection killed by the server, a call cancelled while its reply is on the way, and calls
that overlap; every reply stays with its own call. (Guards for any connection the path keeps between calls.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from appliance.queue import DuplicateJob, Queue


@pytest.fixture
async def q(redis_url: str) -> AsyncIterator[Queue]:
    queue = await Queue.connect(redis_url, queue_name="conns")
    yield queue
    await queue.close()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.execute_command("CLIENT", "UNPAUSE")
    await client.aclose()


async def test_a_killed_connection_is_replaced(q: Queue, admin: aioredis.Redis) -> None:
    await q.submit({"service": "echo"})
    await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await q.submit({"service": "echo"})  # its socket is dead: redis-py's path (with its retry) runs it
    await q.submit({"service": "echo"})
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


async def test_work_given_to_do_meanwhile_runs_while_the_call_is_out(q: Queue, admin: aioredis.Redis) -> None:
    # Queue.submit builds the Job it returns while submit.lua runs in Redis (ScriptSet.call's `meanwhile`).
    call = q.conn.prepare("wake", ["some-shape", q.conn.wake_check], shape="some-shape")

    async def run() -> list[bool]:
        out: list[bool] = []
        task = asyncio.ensure_future(q.conn.run(call, meanwhile=lambda: out.append(not task.done())))
        assert await task == 0
        return out

    await run()  # loads the script
    assert await run() == [True]
    await (
        admin.script_flush()
    )  # NOSCRIPT, loaded, sent again: offered once per send, each while the call is out
    assert await run() == [True, True]
    job = await q.submit({"service": "echo"})
    assert (await q.require(job.id)).status.value == job.status.value == "pending"
