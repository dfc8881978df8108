"""Draining a machine: a Redis flag its workers check before claiming (`appliance fleet drain|undrain`)."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from appliance.machine import keys


async def set_drain(redis: Redis, machine_id: str, reason: str = "") -> None:
    value = json.dumps({"since_ms": int(time.time() * 1000), "reason": reason})
    await redis.set(keys.drain_key(machine_id), value)


async def clear_drain(redis: Redis, machine_id: str) -> bool:
    """True when the machine was drained."""
    return bool(await redis.delete(keys.drain_key(machine_id)))


async def is_drained(redis: Redis, machine_id: str) -> bool:
    return bool(await redis.exists(keys.drain_key(machine_id)))


async def known_machines(redis: Redis) -> list[str]:
    """Machines that registered at some point (including stale ones whose info key expired)."""
    members = await redis.zrange(keys.MACHINES_KEY, 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]
