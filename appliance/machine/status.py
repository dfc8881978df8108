"""The machine status payload published on `machine:status:<id>` and served at /status.

Shape (kept close to the original system's aggregator so the monitor's machine cards map one to one):

    {machine_id, machine_type, timestamp (ms), update_type: periodic|event_driven|machine_ready|shutdown,
     status_interval_s, health_url, supervision: systemd|unmanaged, healthy, ready, draining,
     structure: {gpu_count, services: [planned service dicts], workers: [worker ids]},
     status: {machine: {phase, uptime_ms, started_at (ms), checks: {redis, registered}, last_error},
              services: {name: {unit, kind, active_state, sub_state, restarts, memory_bytes, cpu_seconds,
                                uptime_s, main_pid, result, status_text, healthy}},
              workers: {worker_id: {slot, is_connected, status, current_job_id, progress, ...}}},
     resources: {hostname, os, cpu_cores, ram_total_bytes, ram_available_bytes, disk_*, nvml_available, ...},
     gpus: [{index, name, uuid, memory_total_bytes, memory_used_bytes, utilization_ratio, temperature_celsius,
             power_watts}],
     queue: {...the queue's stats...} | null}

No configuration is copied in, and every string is scrubbed of the machine's secret values before it leaves.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from appliance.config import Settings
from appliance.machine.state import MachineState, Phase

UPDATE_TYPES = ("periodic", "event_driven", "machine_ready", "shutdown")

REDACTED = "[redacted]"


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """Replace every occurrence of a secret value in any string of a JSON-like structure."""
    secret_list = [s for s in secrets if s and len(s) >= 4]  # a 1-3 char "secret" would mangle ordinary text
    if not secret_list:
        return value

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            for s in secret_list:
                if s in v:
                    v = v.replace(s, REDACTED)
            return v
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return v

    return walk(value)


def _worker_entry(state: MachineState, worker_id: str, slot: str | None) -> dict[str, Any]:
    reported = dict(state.workers.get(worker_id) or {})
    entry: dict[str, Any] = {"slot": slot, "is_connected": bool(reported)}
    entry.update(reported)
    entry.setdefault("status", "offline" if not reported else "unknown")
    entry.setdefault("current_job_id", None)
    entry.setdefault("progress", None)
    return entry


_UNIT_FIELDS = (
    "active_state",
    "sub_state",
    "restarts",
    "memory_bytes",
    "cpu_seconds",
    "uptime_s",
    "main_pid",
    "result",
    "status_text",
)


def _service_entries(state: MachineState) -> dict[str, Any]:
    """`status.services`: each planned service with its unit's state and whether it is healthy."""
    health = state.service_health()
    services: dict[str, Any] = {}
    for svc in state.plan.services:
        unit = state.units.get(svc.unit)
        entry: dict[str, Any] = {"unit": svc.unit, "kind": svc.kind}
        if unit is not None:
            u = unit.to_dict()
            entry.update({k: u[k] for k in _UNIT_FIELDS})
        else:
            entry.update({"active_state": "unknown", "sub_state": "unknown", "restarts": 0})
        entry["healthy"] = health.get(svc.name, False)
        services[svc.name] = entry
    return services


def _worker_entries(state: MachineState) -> dict[str, Any]:
    """`status.workers`: the planned workers, then any other of this machine's that reported."""
    workers: dict[str, Any] = {}
    for svc in state.plan.workers:
        wid = svc.worker_id(state.machine_id)
        if wid:
            workers[wid] = _worker_entry(state, wid, svc.slot)
    for wid in state.workers:  # workers of this machine that the plan does not know (an older plan)
        workers.setdefault(wid, _worker_entry(state, wid, None))
    return workers


def build_status(state: MachineState, update_type: str = "periodic") -> dict[str, Any]:
    if update_type not in UPDATE_TYPES:
        raise ValueError(f"update_type must be one of {UPDATE_TYPES}, not {update_type!r}")
    services = _service_entries(state)
    workers = _worker_entries(state)
    res = state.resources
    payload: dict[str, Any] = {
        "machine_id": state.machine_id,
        "machine_type": state.machine_type,
        "timestamp": int(time.time() * 1000),
        "update_type": update_type,
        "status_interval_s": state.status_interval_s,
        "health_url": state.health_url,
        "supervision": state.supervision,
        "healthy": state.healthy(),
        "ready": state.ready(),
        "draining": state.draining,
        "structure": {
            "gpu_count": res.gpu_count if res else 0,
            "services": [s.to_dict() for s in state.plan.services],
            "workers": state.plan.worker_ids(),
        },
        "status": {
            "machine": {
                "phase": state.phase.value,
                "uptime_ms": int(state.uptime_s() * 1000),
                "started_at": int(state.started_at * 1000),
                "checks": state.checks(),
                "last_error": state.last_error,
            },
            "services": services,
            "workers": workers,
        },
        "resources": ({k: v for k, v in res.to_dict().items() if k != "gpus"} if res else None),
        "gpus": [asdict(g) for g in res.gpus] if res else [],
        "queue": state.queue_stats,
    }
    return scrub(payload, state.secrets)


def status_line(state: MachineState, *, supervised: bool) -> str:
    """The one-line `STATUS=` systemd shows: phase, services up, busy workers, what is wrong (or awaited)."""
    health = state.service_health()
    up = sum(health.values())
    busy = sum(1 for w in state.workers.values() if w.get("current_job_id") or w.get("jobs"))
    if state.phase is Phase.STOPPING:
        n = running_jobs(state)
        return f"stopping: draining {n} job{'s' if n != 1 else ''}" if n else "stopping"
    missing = state.not_ready()
    if state.phase is Phase.STARTING and missing:
        return "starting: waiting for " + ", ".join(missing)
    line = (
        f"{state.phase.value}: {up}/{len(health)} services "
        f"{'active' if state.managed or supervised else 'unmanaged'}, {busy} busy"
    )
    if state.phase is not Phase.READY and missing:
        line += "; " + "; ".join(missing)
    return line + ("; draining" if state.draining else "")


def running_jobs(state: MachineState) -> int:
    """Jobs this machine's workers hold, as they last reported."""
    return sum(
        len(w.get("jobs") or ()) or (1 if w.get("current_job_id") else 0) for w in state.workers.values()
    )


def change_signature(state: MachineState) -> tuple[Any, ...]:
    """What, when it changes, is published at once rather than at the next interval."""
    units = tuple(sorted((u, st.active_state, st.sub_state, st.restarts) for u, st in state.units.items()))
    workers = tuple(
        sorted(
            (w, str(e.get("status") or e.get("state")), str(e.get("current_job_id")), bool(e.get("alive")))
            for w, e in state.workers.items()
        )
    )
    return units, workers, state.draining, state.phase, state.redis_ok


def registration_record(settings: Settings, state: MachineState, supervision: str) -> dict[str, Any]:
    """What `machine:<id>:info` says about this machine: identity, capabilities, plan, health URL."""
    res = state.resources
    m = settings.machine
    capabilities = {
        "machine_type": state.machine_type,
        "gpu_count": res.gpu_count if res else 0,
        "gpus": [
            {"name": g.name, "uuid": g.uuid, "memory_total_bytes": g.memory_total_bytes}
            for g in (res.gpus if res else [])
        ],
        "cpu_cores": res.cpu_cores if res else 0,
        "ram_total_bytes": res.ram_total_bytes if res else 0,
        "pool": m.pool,
        "region": m.region,
        "tags": m.tags,
    }
    return {
        "machine_id": m.id,
        "machine_type": state.machine_type,
        "hostname": res.hostname if res else "",
        "health_url": state.health_url,
        "supervision": supervision,
        "phase": state.phase.value,
        "started_at": int(state.started_at * 1000),
        "capabilities": capabilities,
        "plan": state.plan.to_dict(),
    }
