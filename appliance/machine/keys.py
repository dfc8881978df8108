"""Every Redis key and channel the machine layer writes, in one place (see docs/metrics.md, "Redis keys").

These are fleet-wide, not per queue, so they carry no queue hash tag; names follow the original system.
"""

from __future__ import annotations

#: Pub/sub channel of lifecycle events of every machine (machine_startup, startup_step, service_started,
#: service_failed, startup_complete, startup_failed, shutdown), JSON with `event_type` and `machine_id`.
STARTUP_EVENTS_CHANNEL = "machine:startup:events"

#: ZSET machine id -> last time (ms) it refreshed its registration; discovery for the monitor. Members whose
#: `machine:<id>:info` expired are stale (the machine died without deregistering).
MACHINES_KEY = "machines"

#: How many recent lifecycle events each machine keeps in `machine:<id>:events`, and for how long (s).
EVENT_HISTORY_LEN = 200
EVENT_HISTORY_TTL_S = 86_400


def info_key(machine_id: str) -> str:
    """HASH: machine_id, machine_type, hostname, health_url, supervision, phase, started_at, last_seen (ms),
    capabilities (JSON), plan (JSON). EXPIREs after machine.registration_ttl_s unless refreshed."""
    return f"machine:{machine_id}:info"


def status_key(machine_id: str) -> str:
    """STRING: the latest status payload (JSON), same TTL as the info key: a snapshot for late subscribers."""
    return f"machine:{machine_id}:status"


def events_key(machine_id: str) -> str:
    """LIST: the machine's recent lifecycle events (JSON), oldest first, capped at EVENT_HISTORY_LEN."""
    return f"machine:{machine_id}:events"


def drain_key(machine_id: str) -> str:
    """STRING: present while the machine is drained (`appliance fleet drain`); workers take no new jobs."""
    return f"machine:{machine_id}:drain"


def status_channel(machine_id: str) -> str:
    """Pub/sub channel of the machine's status payloads (periodic and on change)."""
    return f"machine:status:{machine_id}"
