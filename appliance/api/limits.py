"""Per-key limits kept in Redis, so every API process of a queue enforces the same count: requests per second
(rate.lua) and unfinished jobs (inflight.lua). Both scripts sit beside this caller and take every key in KEYS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.api.scripts import api_script
from appliance.queue.keys import QueueKeys


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused and when to come back."""

    detail: str
    retry_after_s: int


class Limits:
    def __init__(self, client: Any, keys: QueueKeys, *, cluster: bool = False) -> None:
        self.client = client
        self.keys = keys
        #: A Cluster client pipelines no scripts: the key's record and its count are then two calls.
        self.cluster = cluster
        # register_script runs EVALSHA and loads the script when the server lacks it (a restart).
        self._rate = client.register_script(api_script("rate.lua"))
        self._inflight = client.register_script(api_script("inflight.lua"))

    def rate_key(self, key_id: str) -> str:
        return self.keys.key(f"api:rate:{key_id}")

    def inflight_key(self, key_id: str) -> str:
        return self.keys.key(f"api:inflight:{key_id}")

    async def request(self, keys_hash: str, key_id: str) -> tuple[str | None, int, int]:
        """One round trip (two on a Cluster): the key's stored record (None: no such key), the requests counted
        in its current window with this one, and the ms until that window ends."""
        if self.cluster:
            record = await self.client.hget(keys_hash, key_id)
            count, wait_ms = await self._rate(keys=[self.rate_key(key_id)], args=[])
        else:
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(keys_hash, key_id)
            await self._rate(keys=[self.rate_key(key_id)], args=[], client=pipe)
            record, (count, wait_ms) = await pipe.execute()
        return (None if record is None else str(record)), int(count), int(wait_ms)

    async def admit(self, key_id: str, limit: int, job_ids: list[str]) -> Refusal | None:
        admitted, count = await self._inflight(
            keys=[self.inflight_key(key_id), self.keys.state], args=[limit, *job_ids]
        )
        if int(admitted):
            return None
        return Refusal(
            f"this key has {int(count)} unfinished jobs; {len(job_ids)} more would pass its limit of {limit}",
            1,
        )

    async def release(self, key_id: str, job_ids: list[str]) -> None:
        """Give back admissions of jobs that were not submitted after all."""
        if job_ids:
            await self.client.zrem(self.inflight_key(key_id), *job_ids)
