"""Webhooks through the API: the `webhook` member of a submit reaches a real receiver, signed with the tenant's
secret (verified with the standardwebhooks package); URLs the service refuses are a 400 naming the field."""

from __future__ import annotations

import asyncio

from appliance.api.keys import Scope
from tests.api.conftest import Server, api_settings, finish
from tests.webhooks.receiver import Receiver


async def test_a_submits_webhook_is_delivered_signed(make_server) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings()
    settings.webhooks.allow_private = ["127.0.0.0/8"]
    settings.webhooks.poll_interval_ms = 50
    server: Server = await make_server(settings)
    alice = await server.client("alice", list(Scope))
    status, secret, _ = await alice.call("GET", "/v1/webhooks/secret")
    assert status == 200 and secret["secret"].startswith("whsec_")
    receiver = await Receiver(secret=secret["secret"]).start()
    try:
        hook = {"url": receiver.url, "events": ["job.completed"]}
        status, job, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo", "webhook": hook})
        assert status == 202
        await finish(server.queue, job["id"], result={"n": 1})
        async with asyncio.timeout(30):
            while not receiver.received:
                await receiver.arrived.wait()
                receiver.arrived.clear()
        (got,) = receiver.received
        assert got.type == "job.completed" and got.body["data"]["id"] == job["id"]
        assert receiver.refused == []
    finally:
        await receiver.stop()


async def test_refused_webhook_urls_name_the_field(server: Server) -> None:
    alice = await server.client("alice")
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "ftp://example.com/x"):
        status, body, _ = await alice.call(
            "POST", "/v1/jobs", json={"service": "echo", "webhook": {"url": url}}
        )
        assert status == 400 and body["detail"].startswith(("webhook.url", "invalid request: webhook.url")), (
            body
        )
    batch = {"jobs": [{"service": "echo"}, {"service": "echo", "webhook": {"url": "http://10.0.0.1/x"}}]}
    status, body, _ = await alice.call("POST", "/v1/jobs/batch", json=batch)
    assert status == 400 and body["detail"].startswith("jobs.1.webhook.url")
    assert (await server.queue.stats()).totals.get("submitted", 0) == 0
    status, page, _ = await alice.call("GET", "/v1/webhooks/dead")
    assert status == 200 and page == {"items": [], "next_cursor": None}
