"""A delivery worker killed (SIGKILL) in the middle of a delivery: after a restart, the delivery is sent again
once its lease ran out, with the same webhook-id."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from appliance.queue import Queue
from appliance.webhooks import WebhookRequest, Webhooks
from tests.webhooks.conftest import eventually, fast_settings
from tests.webhooks.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]


async def start_worker(redis_url: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("deliver_proc.py")),
        redis_url,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        assert (await proc.stdout.readline()).strip() == b"ready"
    return proc


async def test_delivery_killed_mid_flight_is_sent_again_after_restart(
    queue: Queue, receiver: Receiver, redis_url: str
) -> None:
    webhooks = await Webhooks.open(queue, fast_settings())  # registers only: no delivery worker here
    receiver.secret = await webhooks.secret("acme")
    receiver.hang = True
    first = await start_worker(redis_url)
    try:
        job = await queue.submit({"service": "echo"})
        await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
        claimed = await queue.claim("w1", [job.shape])
        assert claimed is not None
        await queue.complete(job.id, claimed.token, {"n": 7})
        async with asyncio.timeout(60):
            await receiver.arrived.wait()  # the worker is mid-delivery, the receiver holds the request
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    assert receiver.received == []
    leased = await queue.client.zrange(webhooks.keys.leases, 0, -1)
    outbox = await queue.client.hkeys(webhooks.keys.outbox)
    assert leased or outbox  # the delivery is still owed (leased by the dead worker, or due again)
    receiver.hang = False
    second = await start_worker(redis_url)
    try:
        await eventually(lambda: len(receiver.received) >= 1, "the delivery after the restart", 60)
    finally:
        second.kill()
        await second.wait()
    got = receiver.received[0]
    assert got.type == "job.completed" and got.body["data"]["result"] == {"n": 7}
    assert set(outbox) <= {got.id} and list(receiver.unique()) == [got.id]
    await webhooks.close()
