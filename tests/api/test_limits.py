"""Per-key limits are kept in Redis: two API processes share one count, for requests per second and for jobs in
flight; past either a client gets 429 with Retry-After."""

from __future__ import annotations

import asyncio

import aiohttp

from appliance.api.keys import KeyStore, Scope
from appliance.api.limits import Limits
from appliance.queue import Queue
from tests.api.conftest import finish, free_port, wait_ready


async def _two_apis(http: aiohttp.ClientSession, api_process) -> list[str]:  # type: ignore[no-untyped-def]
    bases = []
    for _ in range(2):
        port = free_port()
        api_process(port)
        bases.append(f"http://127.0.0.1:{port}")
    for base in bases:
        await wait_ready(http, base)
    return bases


async def test_the_request_rate_is_shared_by_two_api_processes(redis_url: str, api_process) -> None:  # type: ignore[no-untyped-def]
    queue = await Queue.connect(redis_url)
    key, token = await KeyStore(queue.client, queue.keys).create("alice", [Scope.READ], rate_per_s=3)
    headers = {"Authorization": f"Bearer {token}"}
    rate_key = Limits(queue.client, queue.keys).rate_key(key.id)
    try:
        async with aiohttp.ClientSession() as http:
            a, b = await _two_apis(http, api_process)
            for _attempt in range(
                5
            ):  # a window can roll over between the four calls on a slow machine: retry
                for _ in range(500):  # until the key's current window has ended
                    if not await queue.client.exists(rate_key):
                        break
                    await asyncio.sleep(0.02)
                answers = []
                for base in (a, b, a, b):
                    async with http.get(base + "/v1/jobs", headers=headers) as resp:
                        answers.append(
                            (resp.status, resp.headers.get("Retry-After"), await resp.json(content_type=None))
                        )
                if answers[3][0] == 429:
                    break
            assert [s for s, _, _ in answers] == [200, 200, 200, 429]
            assert answers[3][1] is not None and int(answers[3][1]) >= 1
            assert answers[3][2]["detail"] == "over this key's limit of 3 requests per second"
    finally:
        await queue.close()


async def test_jobs_in_flight_are_counted_across_processes(redis_url: str, api_process) -> None:  # type: ignore[no-untyped-def]
    queue = await Queue.connect(redis_url)
    _, token = await KeyStore(queue.client, queue.keys).create("alice", [Scope.SUBMIT], max_in_flight=2)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as http:
            a, b = await _two_apis(http, api_process)
            ids = []
            for base in (a, b):
                async with http.post(base + "/v1/jobs", json={"service": "echo"}, headers=headers) as resp:
                    assert resp.status == 202
                    ids.append((await resp.json())["id"])
            for base in (a, b):
                async with http.post(base + "/v1/jobs", json={"service": "echo"}, headers=headers) as resp:
                    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
                    assert "2 unfinished jobs" in (await resp.json(content_type=None))["detail"]
            await finish(queue, ids[0])
            async with http.post(b + "/v1/jobs", json={"service": "echo"}, headers=headers) as resp:
                assert resp.status == 202
            # A batch that would not fit is refused whole.
            await finish(queue, ids[1])
            batch = {"jobs": [{"service": "echo"}, {"service": "echo"}]}
            async with http.post(a + "/v1/jobs/batch", json=batch, headers=headers) as resp:
                assert resp.status == 429
        assert (await queue.stats()).totals["submitted"] == 3
    finally:
        await queue.close()
