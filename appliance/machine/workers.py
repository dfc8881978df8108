"""This machine's workers as the queue sees them: registration, live status, last heartbeat.

Workers write their own entries (WorkerSession: `workers`, `worker_status`, `workers_seen` of the queue's keys);
the supervisor only reads them, so status shows what the workers themselves report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from appliance.queue import Queue

log = logging.getLogger(__name__)


def _json(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def registered_workers(queue: Queue, machine_id: str) -> list[str]:
    """Ids of workers registered with the queue as belonging to `machine_id` (one HGETALL of the registry)."""
    registry = await queue.client.hgetall(queue.keys.workers)
    return sorted(wid for wid, raw in registry.items() if _json(raw).get("machine_id") == machine_id)


async def read_workers(queue: Queue, worker_ids: Iterable[str], now_ms: int) -> dict[str, dict[str, Any]]:
    """Live entries of the given workers: their own status record plus `last_seen_ms` and `alive`
    (heartbeat within the queue's worker TTL). Workers with neither status nor heartbeat are left out."""
    ids = list(worker_ids)
    if not ids:
        return {}
    k = queue.keys
    pipe = queue.client.pipeline(transaction=False)
    pipe.hmget(k.worker_status, ids)
    for wid in ids:
        pipe.zscore(k.workers_seen, wid)
    statuses, *seen = await pipe.execute()
    ttl = queue.settings.worker_ttl_ms
    out: dict[str, dict[str, Any]] = {}
    for wid, raw, last in zip(ids, statuses, seen, strict=True):
        entry = _json(raw)
        if not entry and last is None:
            continue
        entry.pop("machine_id", None)
        entry.pop("worker_id", None)
        entry["last_seen_ms"] = int(last) if last is not None else None
        entry["alive"] = last is not None and now_ms - int(last) <= ttl
        out[wid] = entry
    return out
