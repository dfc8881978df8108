"""The machine's presence in Redis: registration, lifecycle events and status publishing."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from appliance.machine.status import scrub
from appliance.queue import registry as keys

log = logging.getLogger(__name__)


def _ms() -> int:
    return int(time.time() * 1000)


class MachineRegistry:
    """Writes one machine's keys and publishes its events. Every payload is scrubbed of `secrets`."""

    def __init__(self, redis: Redis, machine_id: str, *, ttl_s: float, secrets: Iterable[str] = ()) -> None:
        self.redis = redis
        self.machine_id = machine_id
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.secrets = frozenset(secrets)

    async def publish_event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Publish one lifecycle event on `machine:startup:events` and append it to the machine's history."""
        event = scrub(
            {"event_type": event_type, "machine_id": self.machine_id, "timestamp": _ms(), **fields},
            self.secrets,
        )
        data = json.dumps(event, default=str)
        history = keys.events_key(self.machine_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.publish(keys.STARTUP_EVENTS_CHANNEL, data)
            pipe.rpush(history, data)
            pipe.ltrim(history, -keys.EVENT_HISTORY_LEN, -1)
            pipe.expire(history, keys.EVENT_HISTORY_TTL_S)
            await pipe.execute()
        # The operator's lines come from the supervisor itself; the events are for machines (and --log-level
        # debug).
        log.debug(
            "event %s %s", event_type, {k: v for k, v in fields.items() if not isinstance(v, dict | list)}
        )
        return event

    async def clear_stale(self) -> bool:
        """Remove what a previous boot of this machine left registered; True when something was there."""
        deleted = await self.redis.delete(keys.info_key(self.machine_id), keys.status_key(self.machine_id))
        removed = await self.redis.zrem(keys.MACHINES_KEY, self.machine_id)
        return bool(deleted or removed)

    async def register(self, info: dict[str, Any]) -> None:
        now = _ms()
        fields = {
            k: (json.dumps(v, default=str) if isinstance(v, dict | list) else str(v))
            for k, v in scrub({**info, "last_seen": now}, self.secrets).items()
            if v is not None
        }
        key = keys.info_key(self.machine_id)
        # The machine's own keys share its hash tag (one slot: one transaction); the `machines` index is
        # elsewhere in a Cluster, so it is written next, and a reader treats a member without info as gone.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, self.ttl_ms)
            await pipe.execute()
        await self.redis.zadd(keys.MACHINES_KEY, {self.machine_id: now})

    async def refresh(self, phase: str) -> bool:
        """Extend the registration; False when it had expired (Redis restarted or flushed): re-register then."""
        now = _ms()
        key = keys.info_key(self.machine_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(key)
            pipe.hset(key, mapping={"last_seen": now, "phase": phase})
            pipe.pexpire(key, self.ttl_ms)
            existed, *_ = await pipe.execute()
        await self.redis.zadd(keys.MACHINES_KEY, {self.machine_id: now})
        if not existed:
            await self.redis.delete(key)  # the HSET above recreated a partial record
        return bool(existed)

    async def publish_status(self, payload: dict[str, Any]) -> None:
        data = json.dumps(scrub(payload, self.secrets), default=str)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.status_key(self.machine_id), data, px=self.ttl_ms)
            pipe.publish(keys.status_channel(self.machine_id), data)
            await pipe.execute()

    async def deregister(self) -> None:
        await self.redis.delete(keys.info_key(self.machine_id), keys.status_key(self.machine_id))
        await self.redis.zrem(keys.MACHINES_KEY, self.machine_id)
