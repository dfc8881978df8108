"""The webhook service runs under a least-privilege Redis user: the submitter's rules plus webhook_rules."""

from __future__ import annotations

import redis.asyncio as aioredis

from appliance.queue import Queue, QueueSettings
from appliance.queue.acl import Role, rules, setuser
from appliance.webhooks import WebhookRequest
from appliance.webhooks.acl import webhook_rules
from tests.webhooks.conftest import delivering, eventually, fast_settings
from tests.webhooks.receiver import Receiver


async def test_delivery_under_submitter_plus_webhook_rules(redis_url: str, receiver: Receiver) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    await admin.execute_command(
        *setuser("api", [*rules(Role.SUBMITTER, ["default"]), *webhook_rules(["default"])], "api-secret")
    )
    await admin.aclose()
    queue = await Queue.connect(
        redis_url, settings=QueueSettings(lease_ms=1000), username="api", password="api-secret"
    )
    worker = await Queue.connect(
        redis_url, settings=QueueSettings(lease_ms=1000)
    )  # the default user: a machine
    try:
        async with delivering(queue, fast_settings(max_age_s=2)) as webhooks:
            receiver.secret = await webhooks.secret("acme")
            await webhooks.secret("acme", rotate=True)
            receiver.secret = await webhooks.secret("acme")
            job = await queue.submit({"service": "echo"})
            await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
            claimed = await worker.claim("w1", [job.shape])
            assert claimed is not None
            await worker.complete(job.id, claimed.token, {"ok": 1})
            await eventually(lambda: len(receiver.unique()) == 1, "the delivery")
            other = await queue.submit({"service": "echo"})
            await webhooks.register("acme", other.id, WebhookRequest(url=receiver.at("/moved")))
            await worker.cancel(other.id)
            await eventually(lambda: _dead(webhooks), "the redirected one given up")
            assert await webhooks.retry_dead("acme") == 1
    finally:
        await queue.close()
        await worker.close()
    assert receiver.refused == []


async def _dead(webhooks: object) -> bool:
    return bool((await webhooks.dead("acme")).items)  # type: ignore[attr-defined]
