"""Who serves the queue: workers (registration, live status, heartbeat) and machines (registration, status,
drain flag), with every key they live under.

Workers write their own entries (WorkerSession); machines write theirs (appliance.machine.registry, which
scrubs secrets first). Everyone else reads them here. Machine keys are fleet-wide, not per queue, so they carry
no queue hash tag: each machine's keys share the hash tag `{<machine id>}` instead, so in a Redis Cluster a
machine's registration, status and history live in one slot and are written in one transaction; the `machines`
index is a key of its own (written apart from them). Names otherwise follow the original system (see
docs/metrics.md, "Redis keys").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.queue.conn import QueueConnection
from appliance.queue.records import json_object, json_or

#: Pub/sub channel of lifecycle events of every machine (machine_startup, startup_step, service_started,
#: service_failed, startup_complete, startup_failed, shutdown), JSON with `event_type` and `machine_id`.
STARTUP_EVENTS_CHANNEL = "machine:startup:events"

#: ZSET machine id -> last time (ms) it refreshed its registration; discovery for the monitor. Members whose
#: `machine:<id>:info` expired are stale (the machine died without deregistering).
MACHINES_KEY = "machines"

#: How many recent lifecycle events each machine keeps in `machine:<id>:events`, and for how long (s).
EVENT_HISTORY_LEN = 200
EVENT_HISTORY_TTL_S = 86_400

#: Fields of a machine's info hash that hold JSON.
INFO_JSON_FIELDS = ("capabilities", "plan")


def machine_prefix(machine_id: str) -> str:
    """What every key of one machine starts with: `machine:{<id>}:` (`{<id>}` is the Cluster hash tag)."""
    return f"machine:{{{machine_id}}}:"


def info_key(machine_id: str) -> str:
    """HASH: machine_id, machine_type, hostname, health_url, supervision, phase, started_at, last_seen (ms),
    capabilities (JSON), plan (JSON). EXPIREs after machine.registration_ttl_s unless refreshed."""
    return f"{machine_prefix(machine_id)}info"


def status_key(machine_id: str) -> str:
    """STRING: the latest status payload (JSON), same TTL as the info key: a snapshot for late subscribers."""
    return f"{machine_prefix(machine_id)}status"


def events_key(machine_id: str) -> str:
    """LIST: the machine's recent lifecycle events (JSON), oldest first, capped at EVENT_HISTORY_LEN."""
    return f"{machine_prefix(machine_id)}events"


def drain_key(machine_id: str) -> str:
    """STRING: present while the machine is drained (`appliance fleet drain`); workers take no new jobs."""
    return f"{machine_prefix(machine_id)}drain"


def status_channel(machine_id: str) -> str:
    """Pub/sub channel of the machine's status payloads (periodic and on change)."""
    return f"machine:status:{machine_id}"


# --- the drain flag (`appliance fleet drain|undrain`), on any client ---------------------------------------------


async def set_drain(redis: Any, machine_id: str, reason: str = "") -> None:
    value = json.dumps({"since_ms": int(time.time() * 1000), "reason": reason})
    await redis.set(drain_key(machine_id), value)


async def clear_drain(redis: Any, machine_id: str) -> bool:
    """True when the machine was drained."""
    return bool(await redis.delete(drain_key(machine_id)))


async def is_drained(redis: Any, machine_id: str) -> bool:
    return bool(await redis.exists(drain_key(machine_id)))


async def known_machines(redis: Any) -> list[str]:
    """Machines that registered at some point (including stale ones whose info key expired)."""
    members = await redis.zrange(MACHINES_KEY, 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


@dataclass(frozen=True)
class MachineRecord:
    machine_id: str
    #: The registration with its JSON fields decoded; None when it expired (the machine is gone).
    info: dict[str, Any] | None
    #: The latest status payload, or None.
    status: dict[str, Any] | None


class Registry:
    """Reads the workers of a queue and the machines of the fleet."""

    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn

    # --- workers ----------------------------------------------------------------------------------------------

    async def registered_workers(self, machine_id: str) -> list[str]:
        """Ids of workers registered with the queue as belonging to `machine_id` (one HGETALL of the registry)."""
        registry = await self.conn.client.hgetall(self.conn.keys.workers)
        return sorted(w for w, raw in registry.items() if json_object(raw).get("machine_id") == machine_id)

    async def read_workers(self, worker_ids: Iterable[str], now_ms: int) -> dict[str, dict[str, Any]]:
        """Live entries of the given workers: their own status record plus `last_seen_ms` and `alive`
        (heartbeat within the queue's worker TTL). Workers with neither status nor heartbeat are left out."""
        ids = list(worker_ids)
        if not ids:
            return {}
        k = self.conn.keys
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.hmget(k.worker_status, ids)
        for wid in ids:
            pipe.zscore(k.workers_seen, wid)
        statuses, *seen = await pipe.execute()
        ttl = self.conn.settings.worker_ttl_ms
        out: dict[str, dict[str, Any]] = {}
        for wid, raw, last in zip(ids, statuses, seen, strict=True):
            entry = json_object(raw)
            if not entry and last is None:
                continue
            entry.pop("machine_id", None)
            entry.pop("worker_id", None)
            entry["last_seen_ms"] = int(last) if last is not None else None
            entry["alive"] = last is not None and now_ms - int(last) <= ttl
            out[wid] = entry
        return out

    async def shape_pools(self, default_pool: str) -> dict[str, str]:
        """Every shape's pool: its requirements' `pool`, else `default_pool`."""
        shapes = await self.conn.client.hgetall(self.conn.keys.shapes)
        return {s: str(json_object(r).get("pool") or default_pool) for s, r in shapes.items()}

    # --- machines ---------------------------------------------------------------------------------------------

    async def machines(self, also: Iterable[str] = ()) -> list[MachineRecord]:
        """Every machine in `machines` (and the ids in `also`), sorted: registration and latest status."""
        client = self.conn.client
        ordered = sorted(set(await known_machines(client)) | set(also))
        pipe = client.pipeline(transaction=False)
        for mid in ordered:
            pipe.hgetall(info_key(mid))
            pipe.get(status_key(mid))
        replies = await pipe.execute()
        out = []
        for i, mid in enumerate(ordered):
            info, status = replies[2 * i], replies[2 * i + 1]
            decoded = {k: (_json_field(v) if k in INFO_JSON_FIELDS else v) for k, v in (info or {}).items()}
            out.append(MachineRecord(mid, decoded or None, (json_object(status) or None) if status else None))
        return out

    async def live_machine_pools(self) -> list[str | None]:
        """The declared pool (None: shares every pool) of each machine whose registration is live."""
        client = self.conn.client
        ids = await known_machines(client)
        if not ids:
            return []
        pipe = client.pipeline(transaction=False)
        for mid in ids:
            pipe.hget(info_key(mid), "capabilities")
            pipe.exists(info_key(mid))
        replies = await pipe.execute()
        pools: list[str | None] = []
        for i in range(0, len(replies), 2):
            capabilities, exists = replies[i], replies[i + 1]
            if exists:  # else the registration expired: the machine is gone
                pool = json_object(capabilities).get("pool")
                pools.append(str(pool) if pool else None)
        return pools


def _json_field(raw: Any) -> dict[str, Any] | None:
    value = json_or(raw, None)
    return value if isinstance(value, dict) else None


def decode_message(data: Any) -> dict[str, Any] | None:
    """A pub/sub payload (machine status or event, job event) as an object, or None when it is not one."""
    value = json_or(data, None)
    return value if isinstance(value, dict) else None
