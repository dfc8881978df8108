"""The API process runs as a real Redis ACL user of the `api` role (what `appliance redis acl --role api` prints,
applied with redis-cli): every endpoint works and Redis refuses nothing, while the user can neither mint API
keys nor reach another queue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from appliance.api.keys import KeyStore, Scope, keys_hash
from appliance.api.server import start
from appliance.config.schema import Settings
from appliance.localredis import LocalRedis
from appliance.queue import Queue, QueueSettings
from tests.api.conftest import finish
from tests.api.sse import events
from tests.queue.test_acl import PASSWORD, make_user, refused


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    redis_server = LocalRedis().start()  # ACL users outlive FLUSHALL: a server of this module's own
    yield redis_server
    redis_server.cleanup()


async def test_the_api_role_serves_every_endpoint_and_nothing_more(
    server: LocalRedis, tmp_path: Path
) -> None:
    make_user(server, tmp_path, "api-a", "api", "--queue", "a")
    settings = Settings.model_validate(
        {"queue": {"channels": "queue", "retry_base_ms": 0}, "webhooks": {"allow_private": ["127.0.0.0/8"]}}
    )
    admin = await Queue.connect(server.url, queue_name="a", settings=QueueSettings(channels="queue"))
    await admin.client.flushall()
    queue = await Queue.connect(
        server.url, queue_name="a", settings=settings.queue, username="api-a", password=PASSWORD
    )
    _, token = await KeyStore(admin.client, admin.keys).create("alice", list(Scope))
    running = await start(queue, settings, "127.0.0.1", 0)
    base, headers = f"http://127.0.0.1:{running.port}", {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:

            async def call(method: str, path: str, status: int, **kwargs: object) -> dict:
                async with http.request(method, base + path, **kwargs) as resp:  # type: ignore[arg-type]
                    body = await resp.json(content_type=None) if resp.content_type.endswith("json") else {}
                    assert resp.status == status, (method, path, body)
                    return body

            hook = {"url": "http://127.0.0.1:9/hook"}
            job = await call("POST", "/v1/jobs", 202, json={"service": "echo", "webhook": hook})
            await call("POST", "/v1/jobs", 202, json={"service": "echo"}, headers={"Idempotency-Key": "k"})
            await call("POST", "/v1/jobs", 202, json={"service": "echo"}, headers={"Idempotency-Key": "k"})
            await call("POST", "/v1/jobs/batch", 202, json={"jobs": [{"service": "echo"}] * 2})
            await call("POST", "/v1/jobs?wait=0.2", 202, json={"service": "echo"})
            await call("GET", f"/v1/jobs/{job['id']}", 200)
            await call("GET", "/v1/jobs?limit=2", 200)
            await call("GET", "/v1/jobs?status=pending", 200)
            await finish(admin, job["id"], "failed")
            await call("POST", f"/v1/jobs/{job['id']}/retry", 202)
            await call("DELETE", f"/v1/jobs/{job['id']}", 200)
            async with http.get(f"{base}/v1/jobs/{job['id']}/events") as resp:
                kinds = [e.event async for e in events(resp)]
            assert kinds[-2:] == ["cancelled", "end"]
            async with http.ws_connect(base + "/v1/ws") as ws:
                await ws.send_json({"follow": [job["id"]]})
                while (await asyncio.wait_for(ws.receive_json(), 10))["type"] != "end":
                    pass
            for path in (
                "/v1/stats",
                "/v1/machines",
                "/v1/pools",
                "/v1/webhooks/dead",
                "/readyz",
                "/metrics",
            ):
                await call("GET", path, 200)
        # What the role must not do: write the API keys, reach another queue.
        await refused(queue.client.hset(keys_hash(queue.keys), "forged", "{}"))
        # Not through a script of its own either: the selector that lets submit_one.lua name the keys hash in
        # its KEYS grants EVALSHA only, so the write inside is checked against read-only access and refused.
        forge = "return redis.call('HSET', KEYS[1], 'forged', '{}')"
        sha = await queue.client.script_load(forge)
        await refused(queue.client.evalsha(sha, 1, keys_hash(queue.keys)))
        assert await admin.client.hget(keys_hash(queue.keys), "forged") is None
        await refused(queue.client.get("appliance:{b}:state"))
        acl_log = await admin.client.execute_command("ACL", "LOG")
        assert len(acl_log) == 3, acl_log  # exactly the three refusals above
    finally:
        await running.stop()
        await queue.close()
        await admin.close()
