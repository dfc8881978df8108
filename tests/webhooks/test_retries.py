"""Retries, give-up, the dead list and its tenants, redirects, URL checks at delivery, secrets and logs."""

from __future__ import annotations

import logging

import pytest

from appliance.config.queue import EventsMode
from appliance.queue import Queue, QueueSettings
from appliance.webhooks import WebhookRefused, WebhookRequest, Webhooks, WebhooksUnavailable
from tests.webhooks.conftest import delivering, eventually, fast_settings
from tests.webhooks.receiver import Receiver


async def finish(queue: Queue, job_id: str, shape: str, result: object = None) -> None:
    claimed = await queue.claim("w1", [shape])
    assert claimed is not None and claimed.job.id == job_id
    await queue.complete(job_id, claimed.token, result)


async def test_receiver_down_for_a_while_gets_every_event_once(queue: Queue, receiver: Receiver) -> None:
    receiver.down = True
    async with delivering(queue, fast_settings()) as webhooks:
        receiver.secret = await webhooks.secret("acme")
        jobs = [await queue.submit({"service": "echo", "payload": {"i": i}}) for i in range(5)]
        for job in jobs:
            await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
            await finish(queue, job.id, job.shape, {"i": job.payload["i"]})
        await eventually(lambda: receiver.attempts >= 15, "retries while the receiver is down")
        assert receiver.received == []
        receiver.down = False
        await eventually(lambda: len(receiver.unique()) == 5, "every event after the receiver is back")
    unique = receiver.unique()
    assert sorted(r.body["data"]["id"] for r in unique.values()) == sorted(j.id for j in jobs)
    assert {r.body["data"]["result"]["i"] for r in unique.values()} == set(range(5))
    assert receiver.refused == []


async def test_given_up_after_max_age_into_the_tenants_dead_list(queue: Queue, receiver: Receiver) -> None:
    receiver.down = True
    async with delivering(queue, fast_settings(max_age_s=1)) as webhooks:
        receiver.secret = await webhooks.secret("acme")
        job = await queue.submit({"service": "echo"})
        await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
        await finish(queue, job.id, job.shape, {"ok": True})
        await eventually(lambda: _dead_count(webhooks, "acme"), "the delivery given up")
        page = await webhooks.dead("acme")
        assert [d.job_id for d in page.items] == [job.id] and page.next_cursor is None
        dead = page.items[0]
        assert dead.type.value == "job.completed" and dead.last_error == "HTTP 503" and dead.attempts >= 2
        assert (await webhooks.dead("other")).items == []  # tenant B sees nothing of tenant A's
        assert await webhooks.retry_dead("other", [dead.id]) == 0  # nor can it replay it
        assert receiver.received == []
        receiver.down = False
        assert await webhooks.retry_dead("acme") == 1
        await eventually(lambda: len(receiver.unique()) == 1, "the replayed delivery")
        assert receiver.received[0].id == dead.id
        assert (await webhooks.dead("acme")).items == []


async def _dead_count(webhooks: Webhooks, tenant: str) -> bool:
    return bool((await webhooks.dead(tenant)).items)


async def test_dead_list_pages_with_a_cursor(queue: Queue, receiver: Receiver) -> None:
    receiver.down = True
    async with delivering(queue, fast_settings(max_age_s=1)) as webhooks:
        jobs = [await queue.submit({"service": "echo"}) for _ in range(5)]
        for job in jobs:
            await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
            await finish(queue, job.id, job.shape)

        async def all_dead() -> bool:
            return len((await webhooks.dead("acme", limit=50)).items) == 5

        await eventually(all_dead, "five given up")
        seen, cursor = [], None
        while True:
            page = await webhooks.dead("acme", limit=2, cursor=cursor)
            seen += [d.job_id for d in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
    assert sorted(seen) == sorted(j.id for j in jobs)


async def test_redirect_is_not_followed(queue: Queue, receiver: Receiver) -> None:
    async with delivering(queue, fast_settings(max_age_s=1)) as webhooks:
        job = await queue.submit({"service": "echo"})
        await webhooks.register("acme", job.id, WebhookRequest(url=receiver.at("/moved")))
        await finish(queue, job.id, job.shape)
        await eventually(lambda: _dead_count(webhooks, "acme"), "the redirected delivery given up")
        dead = (await webhooks.dead("acme")).items[0]
    assert receiver.attempts >= 1 and receiver.followed == 0
    assert dead.last_error is not None and "redirect not followed" in dead.last_error


async def test_url_is_checked_again_at_delivery(queue: Queue, receiver: Receiver) -> None:
    """Allowed when registered, not when sent (the allow-list changed, or a name now resolves elsewhere)."""
    async with delivering(queue, fast_settings()) as webhooks:
        job = await queue.submit({"service": "echo"})
        await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
    async with delivering(queue, fast_settings(allow_private=[], max_age_s=1)) as strict:
        await finish(queue, job.id, job.shape)
        await eventually(lambda: _dead_count(strict, "acme"), "the refused delivery given up")
        dead = (await strict.dead("acme")).items[0]
    assert receiver.attempts == 0
    assert dead.last_error is not None and dead.last_error.startswith("refused:")


async def test_loopback_url_is_refused_at_registration_without_the_allow_list(queue: Queue) -> None:
    webhooks = await Webhooks.open(queue, fast_settings(allow_private=[]))
    job = await queue.submit({"service": "echo"})
    for url in ("http://127.0.0.1:8080/h", "http://localhost/h", "http://[::1]/h", "http://2130706433/h"):
        with pytest.raises(WebhookRefused, match="loopback"):
            await webhooks.register("acme", job.id, WebhookRequest(url=url))
    assert await queue.client.hlen(webhooks.keys.hooks) == 0


async def test_job_that_ended_before_registration_still_gets_its_event(
    queue: Queue, receiver: Receiver
) -> None:
    async with delivering(queue, fast_settings()) as webhooks:
        receiver.secret = await webhooks.secret("acme")
        job = await queue.submit({"service": "echo"})
        await finish(queue, job.id, job.shape, "done")
        await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url))
        await eventually(lambda: len(receiver.unique()) == 1, "the terminal event")
    assert next(iter(receiver.unique().values())).body["data"]["result"] == "done"


async def test_rotated_secret_old_and_new_both_verify(queue: Queue, receiver: Receiver) -> None:
    old_receiver = await Receiver().start()
    try:
        async with delivering(queue, fast_settings()) as webhooks:
            old = await webhooks.secret("acme")
            new = await webhooks.secret("acme", rotate=True)
            assert old != new and new.startswith("whsec_") and await webhooks.secret("acme") == new
            receiver.secret, old_receiver.secret = new, old
            for target in (receiver, old_receiver):
                job = await queue.submit({"service": "echo"})
                await webhooks.register("acme", job.id, WebhookRequest(url=target.url))
                await finish(queue, job.id, job.shape)
            await eventually(lambda: receiver.received and old_receiver.received, "both verified")
    finally:
        await old_receiver.stop()
    assert receiver.refused == [] and old_receiver.refused == []


async def test_secret_never_appears_in_logs(
    queue: Queue, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.down = True
    async with delivering(queue, fast_settings(max_age_s=1)) as webhooks:
        secret = await webhooks.secret("acme")
        job = await queue.submit({"service": "echo"})
        await webhooks.register("acme", job.id, WebhookRequest(url=receiver.url + "?token=receivers-own"))
        await finish(queue, job.id, job.shape)
        await eventually(lambda: _dead_count(webhooks, "acme"), "given up")
    text = caplog.text
    assert "given up" in text and "again in" in text  # the failures were logged...
    assert secret not in text and secret.removeprefix("whsec_") not in text  # ...without the secret
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("appliance"))
    assert "receivers-own" not in ours  # nor the receiver's own token in its URL (the receiver's log has it)


async def test_refuses_to_run_without_the_event_stream(redis_url: str) -> None:
    q = await Queue.connect(redis_url, settings=QueueSettings(events=EventsMode.PUBSUB))
    try:
        with pytest.raises(WebhooksUnavailable, match="queue.events"):
            await Webhooks.open(q, fast_settings())
    finally:
        await q.close()


async def test_registered_before_submit_and_unregistered(queue: Queue, receiver: Receiver) -> None:
    """The API registers a job's webhook under the id it chose before submitting; a failed submit unregisters."""
    async with delivering(queue, fast_settings()) as webhooks:
        receiver.secret = await webhooks.secret("acme")
        await webhooks.register("acme", "job-chosen-1", WebhookRequest(url=receiver.url))
        await webhooks.register("acme", "job-never-submitted", WebhookRequest(url=receiver.url))
        await webhooks.unregister(["job-never-submitted"])
        assert await queue.client.hkeys(webhooks.keys.hooks) == ["job-chosen-1"]
        job = await queue.submit({"id": "job-chosen-1", "service": "echo"})
        await finish(queue, job.id, job.shape, 1)
        await eventually(lambda: len(receiver.unique()) == 1, "the event of the job registered first")
        await eventually(lambda: _no_hooks(queue, webhooks), "the registration ended with the job")


async def _no_hooks(queue: Queue, webhooks: Webhooks) -> bool:
    return await queue.client.hlen(webhooks.keys.hooks) == 0
