"""Webhooks on a real 3-node Redis Cluster: the feed, the outbox scripts, the dead list and the secrets all
live in the queue's slot, so every script and every call finds its keys on one node."""

from __future__ import annotations

from appliance.localredis import LocalRedis
from appliance.queue import Queue, QueueSettings
from appliance.webhooks import WebhookRequest, Webhooks
from tests.queue.test_cluster import cluster, pytestmark  # noqa: F401  (the fixture, and its skip marker)
from tests.webhooks.conftest import delivering, eventually, fast_settings
from tests.webhooks.receiver import Receiver


async def test_webhooks_on_a_cluster(cluster: list[LocalRedis], receiver: Receiver) -> None:  # noqa: F811
    queue = await Queue.connect(
        f"redis://127.0.0.1:{cluster[0].port}",
        cluster=True,
        queue_name="hooks",
        settings=QueueSettings(lease_ms=1000),
    )
    try:
        async with delivering(queue, fast_settings(max_age_s=1)) as webhooks:
            await webhooks.secret("acme")
            receiver.secret = await webhooks.secret("acme", rotate=True)
            # Registered before the submit, under the id the caller chose, as the API does.
            await webhooks.register("acme", "cl-done", WebhookRequest(url=receiver.url))
            done = await queue.submit({"id": "cl-done", "service": "echo"})
            claimed = await queue.claim("w1", [done.shape])
            assert claimed is not None
            await queue.complete(done.id, claimed.token, {"ok": True})
            await eventually(lambda: len(receiver.unique()) == 1, "the delivery on the cluster")
            await webhooks.register("acme", "cl-lost", WebhookRequest(url=receiver.at("/moved")))
            lost = await queue.submit({"id": "cl-lost", "service": "echo"})
            await queue.cancel(lost.id)
            await eventually(lambda: _dead(webhooks), "given up on the cluster")
            assert await webhooks.retry_dead("acme") == 1
    finally:
        await queue.close()
    assert receiver.refused == []


async def _dead(webhooks: Webhooks) -> bool:
    return bool((await webhooks.dead("acme")).items)
