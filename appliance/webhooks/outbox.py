"""The outbox of deliveries in Redis: each transition one script (appliance/webhooks/scripts), claimed with a
lease and a fencing token the way the queue claims jobs, plus the tenants' dead lists."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from appliance.webhooks.keys import WebhookKeys
from appliance.webhooks.models import DeadDelivery, DeadPage, Delivery
from appliance.webhooks.scripts import OutboxScripts

#: The most dead deliveries one page shows.
MAX_PAGE = 500


@dataclass(frozen=True)
class Leased:
    """Deliveries leased to this worker at the server's time `now_ms`, under one fencing token."""

    now_ms: int
    token: str
    deliveries: list[Delivery]


class Outbox:
    def __init__(self, client: Any, keys: WebhookKeys, cluster: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.scripts = OutboxScripts(cluster=cluster)

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self.scripts.call(self.client, name, keys, args)

    async def enqueue(self, delivery: Delivery, ending_job: str = "") -> bool:
        """Queue a delivery once (False: its id is in the outbox already). `ending_job` names the job whose
        registration ends with it (its terminal event)."""
        k = self.keys
        code = await self._run(
            "enqueue", [k.outbox, k.due, k.hooks], [delivery.id, delivery.model_dump_json(), ending_job]
        )
        return int(code) == 1

    async def claim(self, count: int, lease_ms: int) -> Leased:
        """Lease up to `count` due deliveries (those whose lease ran out first). A record that no longer
        parses is skipped: it stays leased, comes back after its lease, and is logged by whoever claims it."""
        k, token = self.keys, secrets.token_hex(12)
        reply = await self._run("claim", [k.due, k.leases, k.owner, k.outbox], [token, lease_ms, count])
        deliveries = []
        for i in range(1, len(reply) - 1, 2):
            try:
                deliveries.append(Delivery.model_validate_json(reply[i + 1]))
            except ValidationError:
                continue
        return Leased(int(reply[0]), token, deliveries)

    async def delivered(self, delivery_id: str, token: str) -> bool:
        k = self.keys
        return int(await self._run("delivered", [k.owner, k.leases, k.outbox], [delivery_id, token])) == 1

    async def retry(self, delivery: Delivery, token: str, delay_ms: int) -> bool:
        k = self.keys
        code = await self._run(
            "retry",
            [k.owner, k.leases, k.due, k.outbox],
            [delivery.id, token, max(0, int(delay_ms)), delivery.model_dump_json()],
        )
        return int(code) == 1

    async def give_up(self, delivery: Delivery, token: str, keep: int) -> bool:
        k = self.keys
        code = await self._run(
            "give_up",
            [k.owner, k.leases, k.outbox, k.dead(delivery.tenant), k.dead_records],
            [delivery.id, token, delivery.model_dump_json(), keep],
        )
        return int(code) == 1

    async def dead(self, tenant: str, limit: int, cursor: str | None) -> DeadPage:
        """A page of one tenant's dead list, newest first. The cursor is `<died ms>:<id>` of the last item
        shown: the next page starts after it (ties on the same ms are kept in id order)."""
        limit = max(1, min(int(limit), MAX_PAGE))
        key = self.keys.dead(tenant)
        top: str | int = "+inf"
        after: str | None = None
        if cursor:
            ms, _, after = cursor.partition(":")
            top = int(ms) if ms.isdigit() else "+inf"
        # Entries at the cursor's own ms come back again and are skipped down to the cursor's id.
        rows = await self.client.zrevrangebyscore(key, top, "-inf", start=0, num=limit + 64, withscores=True)
        if after:
            ids = [str(i) for i, _ in rows]
            if after in ids:
                rows = rows[ids.index(after) + 1 :]
        rows = rows[: limit + 1]
        page, more = rows[:limit], len(rows) > limit
        records = await self.client.hmget(self.keys.dead_records, [i for i, _ in page]) if page else []
        items = []
        for (_delivery_id, died), record in zip(page, records, strict=True):
            if record is None:
                continue
            try:
                d = Delivery.model_validate_json(record)
            except ValidationError:
                continue
            items.append(
                DeadDelivery(
                    id=d.id,
                    job_id=d.job_id,
                    type=d.type,
                    url=d.url,
                    attempts=d.attempts,
                    created_at_ms=d.created_ms,
                    died_at_ms=int(died),
                    last_error=d.last_error,
                )
            )
        next_cursor = f"{int(page[-1][1])}:{page[-1][0]}" if more and page else None
        return DeadPage(items=items, next_cursor=next_cursor)

    async def dead_ids(self, tenant: str) -> list[str]:
        return [str(i) for i in await self.client.zrange(self.keys.dead(tenant), 0, -1)]

    async def revive(self, tenant: str, delivery_id: str, now_ms: int) -> bool:
        """Back in the outbox, its age counted from `now_ms` (False: not in the tenant's dead list)."""
        k = self.keys
        record = await self.client.hget(k.dead_records, delivery_id)
        if record is None:
            return False
        try:
            delivery = Delivery.model_validate_json(record)
        except ValidationError:
            return False
        fresh = delivery.model_copy(update={"created_ms": now_ms, "attempts": 0})
        code = await self._run(
            "revive",
            [k.dead(tenant), k.dead_records, k.outbox, k.due],
            [delivery_id, fresh.model_dump_json()],
        )
        return int(code) == 1
