"""Each outbox script is called with exactly the keys its header names, in order, all in one hash slot; and a
stale token changes nothing (the fencing of a lease that ran out)."""

from __future__ import annotations

import re
from typing import Any

from appliance.queue import Queue
from appliance.webhooks.keys import WebhookKeys
from appliance.webhooks.models import Delivery, EventType
from appliance.webhooks.outbox import Outbox
from appliance.webhooks.scripts import SCRIPT_NAMES, OutboxScripts, read


class Recording(OutboxScripts):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []

    async def call(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        self.calls.append((name, list(keys)))
        return await super().call(client, name, keys, args)


def header(name: str) -> list[str]:
    head = read(name).split("]]", 1)[0]
    return [key for _n, key in sorted((int(n), k) for n, k in re.findall(r"KEYS\[(\d+)\]\s+(\w+)", head))]


def expected(keys: WebhookKeys, name: str, tenant: str) -> str:
    return keys.dead(tenant) if name == "dead" else str(getattr(keys, name))


def delivery(n: int) -> Delivery:
    return Delivery(
        id=f"msg_{n}",
        tenant="acme",
        job_id=f"j{n}",
        type=EventType.COMPLETED,
        url="http://x",
        body="{}",
        created_ms=1,
    )


async def test_every_script_gets_its_header_keys_in_one_slot(queue: Queue) -> None:
    keys = WebhookKeys(queue.name)
    outbox = Outbox(queue.client, keys)
    outbox.scripts = recording = Recording()
    assert await outbox.enqueue(delivery(1), "j1") and await outbox.enqueue(delivery(2))
    assert not await outbox.enqueue(delivery(1))  # once
    leased = await outbox.claim(10, 60_000)
    assert {d.id for d in leased.deliveries} == {"msg_1", "msg_2"}
    assert not await outbox.retry(delivery(1), "stale-token", 0)  # fenced
    assert await outbox.retry(delivery(1), leased.token, 0)
    assert await outbox.give_up(delivery(2), leased.token, 10)
    assert not await outbox.delivered("msg_2", leased.token)  # given up: the lease is gone
    assert await outbox.revive("acme", "msg_2", 5)
    again = await outbox.claim(10, 60_000)
    for d in again.deliveries:
        assert await outbox.delivered(d.id, again.token)
    assert await queue.client.hlen(keys.outbox) == 0
    assert {name for name, _ in recording.calls} == set(SCRIPT_NAMES)
    for name, passed in recording.calls:
        assert passed == [expected(keys, k, "acme") for k in header(name)], name
        assert all("{" + queue.name + "}" in k for k in passed), name
