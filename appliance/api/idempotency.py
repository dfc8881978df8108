"""Idempotency-Key: the first request with a key reserves it for its job ids; a repeat with the same body gets
the same jobs, one with a different body a 409. One SET NX GET: atomic across every API process."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from appliance.api.problems import ProblemError
from appliance.queue.keys import QueueKeys

MAX_KEY_LEN = 255


@dataclass(frozen=True)
class Reservation:
    key: str
    #: The ids of the first request with this key (a repeat), or None when this request reserved it.
    earlier: list[str] | None


def body_digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Idempotency:
    def __init__(self, client: Any, keys: QueueKeys, ttl_s: int) -> None:
        self.client, self.keys, self.ttl_s = client, keys, ttl_s

    async def reserve(self, tenant: str, header: str, body: Any, job_ids: list[str]) -> Reservation:
        if not 1 <= len(header) <= MAX_KEY_LEN or not header.isprintable():
            raise ProblemError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LEN} printable characters")
        slot = hashlib.sha256(header.encode()).hexdigest()[:32]
        key = self.keys.key(f"api:idem:{tenant}:{slot}")
        digest = body_digest(body)
        earlier = await self.client.set(
            key, f"{digest}|{','.join(job_ids)}", nx=True, get=True, ex=self.ttl_s
        )
        if earlier is None:
            return Reservation(key, None)
        earlier_digest, _, ids = str(earlier).partition("|")
        if earlier_digest != digest:
            raise ProblemError(
                409, "this Idempotency-Key was used with a different body; use a new key for a new request"
            )
        return Reservation(key, ids.split(","))

    async def forget(self, reservation: Reservation) -> None:
        """Drop a reservation whose request failed, so the client may retry with the same key."""
        await self.client.delete(reservation.key)
