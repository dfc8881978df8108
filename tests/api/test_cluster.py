"""The API on a real 3-node Redis Cluster: the one-round-trip submit names every key in KEYS, all under the
queue's hash tag (the API keys hash included), so it runs on the queue's node; a revoked key is refused there
too."""

from __future__ import annotations

import aiohttp

from appliance.api.keys import KeyStore, Scope
from appliance.api.server import start
from appliance.localredis import LocalRedis
from appliance.queue import Queue
from tests.api.conftest import api_settings
from tests.queue.test_cluster import cluster, pytestmark  # noqa: F401  (the fixture, and its skip marker)


async def test_submits_on_a_cluster(cluster: list[LocalRedis]) -> None:  # noqa: F811
    settings = api_settings()
    queue = await Queue.connect(
        f"redis://127.0.0.1:{cluster[0].port}", cluster=True, queue_name="web", settings=settings.queue
    )
    store = KeyStore(queue.client, queue.keys)
    key, token = await store.create("acme", [Scope.SUBMIT, Scope.READ], max_in_flight=3)
    running = await start(queue, settings, "127.0.0.1", 0, webhooks=False)
    base, headers = f"http://127.0.0.1:{running.port}", {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            ids = []
            for n in range(3):  # the first verifies the key; the others take one round trip
                async with http.post(
                    base + "/v1/jobs", json={"service": "echo", "payload": {"n": n}}
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    ids.append((await resp.json())["id"])
            async with http.post(base + "/v1/jobs", json={"service": "echo"}) as resp:
                assert (
                    resp.status == 429
                    and "3 unfinished jobs" in (await resp.json(content_type=None))["detail"]
                )
            for n, job_id in enumerate(ids):
                stored = await queue.get(job_id)
                assert stored is not None and stored.customer_id == "acme" and stored.payload == {"n": n}
            assert await store.revoke(key.id)
            async with http.post(base + "/v1/jobs", json={"service": "echo"}) as resp:
                assert resp.status == 401
    finally:
        await running.stop()
        await queue.close()
