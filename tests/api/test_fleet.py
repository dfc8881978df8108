"""Fleet views (admin keys), probes and /metrics: request counts and latencies by route template and status,
checked by `promtool check metrics`."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from appliance.api.keys import Scope
from tests.api.conftest import Server


async def test_fleet_views_need_admin_and_answer(server: Server) -> None:
    admin = await server.client("ops", [Scope.ADMIN])
    await admin.call("POST", "/v1/jobs", json={"service": "echo", "pool": "fast"})
    status, stats, _ = await admin.call("GET", "/v1/stats")
    assert status == 200 and stats["waiting"] == 1
    status, pools, _ = await admin.call("GET", "/v1/pools")
    fast = next(p for p in pools["pools"] if p["name"] == "fast")
    assert status == 200 and fast["waiting"] == 1 and fast["config"]["target_drain_s"] == 60
    status, machines, _ = await admin.call("GET", "/v1/machines")
    assert status == 200 and machines == {"machines": []}
    for path in ("/healthz", "/readyz"):
        async with server.http.get(server.base + path) as resp:
            assert resp.status == 200


async def test_readyz_says_when_redis_is_gone(make_server, private_redis) -> None:  # type: ignore[no-untyped-def]
    from appliance.api.server import start
    from appliance.queue import Queue
    from tests.api.conftest import api_settings

    settings = api_settings()
    queue = await Queue.connect(private_redis.url, settings=settings.queue)
    running = await start(queue, settings, "127.0.0.1", 0)
    try:
        private_redis.stop()
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{running.port}/readyz") as resp,
        ):
            body = await resp.json(content_type=None)
            assert resp.status == 503 and "Redis does not answer" in body["detail"]
    finally:
        await running.stop()
        await queue.close()


async def test_metrics_count_requests_by_route_and_pass_promtool(server: Server) -> None:
    alice = await server.client("alice")
    await alice.call("GET", "/v1/jobs/nope")
    await alice.call("GET", "/v1/jobs/also-nope")
    await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    async with server.http.get(server.base + "/nowhere") as resp:
        assert resp.status == 404 and resp.content_type == "application/problem+json"
    async with server.http.get(server.base + "/metrics") as resp:
        text = await resp.text()
    assert 'appliance_api_requests_total{method="GET",route="/v1/jobs/{id}",status="404"} 2.0' in text
    assert 'appliance_api_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text
    assert 'route="unmatched"' in text
    assert alice.token not in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, out.decode()
