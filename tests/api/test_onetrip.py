"""`POST /v1/jobs` in one Redis round trip (appliance.api.onetrip): once a process has verified a key, a submit is
one EVALSHA that checks the key, counts its rate, admits the job and submits it; and nothing of what the key
check and the limits promise is lost on the way: a revoked key is refused by the next submit, its refusals come
before the body's, the limits answer 429 with Retry-After, and the tenant still comes from the key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.api.keys import KeyStore, Scope
from appliance.api.server import start
from appliance.queue import Queue
from tests.api.conftest import Client, Server, api_settings


async def top_level_commands(queue: Queue, action: Any) -> list[str]:
    """The names of the commands clients sent Redis while `action` ran (MONITOR; not those scripts ran
    inside, and not the event hub's XREAD)."""
    seen: list[str] = []
    async with queue.client.monitor() as monitor:
        await queue.client.echo("start")
        while (await monitor.next_command())["command"] != "ECHO start":
            pass
        await action
        await queue.client.echo("end")
        while (got := await monitor.next_command())["command"] != "ECHO end":
            name = got["command"].split(" ", 1)[0].upper()
            if got["client_type"] != "lua" and name != "XREAD":
                seen.append(name)
    return seen


@pytest.fixture
async def quiet_server(redis_url: str) -> AsyncIterator[Server]:
    """An API without the webhook delivery worker, whose polling would be counted with the submits."""
    import aiohttp

    settings = api_settings()
    queue = await Queue.connect(redis_url, settings=settings.queue)
    running = await start(queue, settings, "127.0.0.1", 0, webhooks=False)
    http = aiohttp.ClientSession()
    try:
        yield Server(
            running, queue, f"http://127.0.0.1:{running.port}", http, KeyStore(queue.client, queue.keys)
        )
    finally:
        await http.close()
        await running.stop()
        await queue.close()


async def test_a_submit_by_a_known_key_is_one_round_trip(quiet_server: Server) -> None:
    server = quiet_server
    alice = await server.client("alice")
    for _ in range(2):  # the key is verified, then the script loaded
        assert (await alice.call("POST", "/v1/jobs", json={"service": "echo"}))[0] == 202
    answer: list[Any] = []

    async def post() -> None:
        answer.extend(await alice.call("POST", "/v1/jobs", json={"service": "echo", "payload": {"n": 2}}))

    assert await top_level_commands(server.queue, post()) == ["EVALSHA"]
    status, job, _ = answer
    assert status == 202 and job["customer_id"] == "alice"
    stored = await server.queue.get(job["id"])
    assert stored is not None and stored.payload == {"n": 2} and stored.customer_id == "alice"


async def test_a_key_revoked_after_its_submits_is_refused_by_the_next(server: Server) -> None:
    alice = await server.client("alice")
    assert (await alice.call("POST", "/v1/jobs", json={"service": "echo"}))[0] == 202
    (key,) = [k for k in await server.store.list() if k.tenant == "alice"]
    assert await server.store.revoke(key.id)
    status, body, resp = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    assert status == 401 and resp.headers["WWW-Authenticate"] == "Bearer", body
    # A bad body from the revoked key: still 401, the key's refusal comes first.
    assert (await alice.call("POST", "/v1/jobs", json={"service": "!"}))[0] == 401
    assert (await server.queue.stats()).totals["submitted"] == 1


async def test_refusals_of_a_known_key_keep_their_order_and_words(server: Server) -> None:
    alice = await server.client("alice")
    reader = await server.client("alice", [Scope.READ])
    assert (await alice.call("POST", "/v1/jobs", json={"service": "echo"}))[0] == 202
    assert (await reader.call("GET", "/v1/jobs"))[0] == 200  # known to the process, without the scope
    status, body, _ = await reader.call("POST", "/v1/jobs", json={"service": "echo"})
    assert status == 403 and "'submit' scope" in body["detail"]
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "id": "mine"})
    assert status == 400 and body["detail"].startswith("id:")
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "customer_id": "bob"})
    assert status == 400 and "customer_id" in body["detail"]
    status, body, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "priority": 5000})
    assert status == 400 and [e["field"] for e in body["errors"]] == ["priority"]
    # Isolation needs a customer: the key's, so this is valid (the body names none).
    isolated = {"service": "echo", "requirements": {"isolation": "strict"}}
    status, body, _ = await alice.call("POST", "/v1/jobs", json=isolated)
    assert status == 202 and body["customer_id"] == "alice", body


async def _until_refused(client: Client, job: dict[str, Any], tries: int = 5) -> list[tuple[int, Any, Any]]:
    answers: list[tuple[int, Any, Any]] = []
    for _ in range(tries):  # a one-second window can roll over between the calls on a slow machine: retry
        answers = [await client.call("POST", "/v1/jobs", json=job) for _ in range(3)]
        if answers[-1][0] == 429:
            break
        await asyncio.sleep(1)
    return answers


async def test_a_known_keys_submits_meet_its_rate_and_in_flight_limits(server: Server) -> None:
    fast = await server.client("alice", rate_per_s=2)
    assert (await fast.call("GET", "/v1/jobs"))[0] == 200  # known to the process
    await asyncio.sleep(1.1)  # that request's window is over
    answers = await _until_refused(fast, {"service": "echo"})
    assert [a[0] for a in answers] == [202, 202, 429]
    assert answers[2][1]["detail"] == "over this key's limit of 2 requests per second"
    assert int(answers[2][2].headers["Retry-After"]) >= 1
    full = await server.client("bob", max_in_flight=1)
    assert (await full.call("POST", "/v1/jobs", json={"service": "echo"}))[0] == 202
    status, body, resp = await full.call("POST", "/v1/jobs", json={"service": "echo"})
    assert status == 429 and resp.headers["Retry-After"] == "1"
    assert body["detail"] == "this key has 1 unfinished jobs; 1 more would pass its limit of 1"
