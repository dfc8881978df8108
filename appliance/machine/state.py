"""What the supervisor knows about its machine right now: one object, written by the supervisor's loops and
read by the health server, the metrics collectors and the status publisher (all on one event loop)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from appliance.machine.plan import ServicePlan
from appliance.machine.resources import HostResources
from appliance.machine.systemd import UnitState


class Phase(StrEnum):
    #: Startup sequence running; /ready answers 503.
    STARTING = "starting"
    #: Every check passes.
    READY = "ready"
    #: Started, but a service or Redis is down: /health is 503 while systemd restarts things.
    DEGRADED = "degraded"
    #: Shutdown in progress.
    STOPPING = "stopping"
    #: Startup failed for good.
    FAILED = "failed"


class Supervision(StrEnum):
    """Who runs the machine's planned processes (`decide_supervision`). A StrEnum: it is stored, shown and
    compared as its value ("systemd" == Supervision.SYSTEMD)."""

    #: systemd is PID 1 and started the supervisor: it runs the planned units, the supervisor watches them.
    SYSTEMD = "systemd"
    #: Container mode (`machine.container_mode`): the supervisor runs the processes itself.
    SUPERVISOR = "supervisor"
    #: Nobody the supervisor can ask (a developer's shell, `appliance machine --unmanaged`).
    UNMANAGED = "unmanaged"


@dataclass
class MachineState:
    machine_id: str
    machine_type: str
    plan: ServicePlan
    health_url: str = ""
    supervision: Supervision = Supervision.UNMANAGED
    phase: Phase = Phase.STARTING
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    resources: HostResources | None = None
    #: unit name -> its latest state (UnitState.active_state == "unmanaged" when systemd does not run it).
    units: dict[str, UnitState] = field(default_factory=dict)
    #: worker id -> the worker's own registry entry as the queue reports it (status, current job, progress ...).
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The queue's counters (QueueStats.model_dump()); None until first read.
    queue_stats: dict[str, Any] | None = None
    #: unit -> {systemd result: stops counted by ExecStopPost=} (see appliance.machine.stops).
    unit_stops: dict[str, dict[str, int]] = field(default_factory=dict)
    #: How often the status is published (`machine.status_interval_s`): carried in the payload, so a monitor
    #: with another interval judges this machine's silence by this machine's own rhythm.
    status_interval_s: float = 15.0
    redis_ok: bool = False
    registered: bool = False
    draining: bool = False
    last_error: str | None = None
    #: Values that must never leave the process (Redis password, API keys); status output is scrubbed of them.
    secrets: frozenset[str] = field(default_factory=frozenset)

    def uptime_s(self) -> float:
        return max(0.0, time.monotonic() - self.started_monotonic)

    @property
    def managed(self) -> bool:
        return self.supervision == Supervision.SYSTEMD

    def service_health(self) -> dict[str, bool]:
        """Per planned service: active under systemd. Unmanaged services are somebody else's to supervise, so
        they count as healthy and the machine's own checks (Redis, registration) decide."""
        out: dict[str, bool] = {}
        for svc in self.plan.services:
            st = self.units.get(svc.unit)
            if st is None or not st.managed:
                out[svc.name] = not self.managed
            else:
                out[svc.name] = st.active
        return out

    def checks(self) -> dict[str, bool]:
        return {"redis": self.redis_ok, "registered": self.registered}

    def healthy(self) -> bool:
        return (
            self.phase in (Phase.STARTING, Phase.READY, Phase.DEGRADED)
            and all(self.checks().values())
            and all(self.service_health().values())
        )

    def not_ready(self) -> list[str]:
        """What keeps the machine from serving, one phrase each; empty when it is ready. Ready means every
        planned service active and, for a worker, its connector answering (its own `service_healthy`: ComfyUI
        loaded, an API reachable). Unmanaged services are somebody else's to supervise and count as ready."""
        missing: list[str] = []
        if not self.redis_ok:
            missing.append("Redis unreachable")
        if not self.registered:
            missing.append("not registered")
        for svc in self.plan.services:
            st = self.units.get(svc.unit)
            if st is None or not st.managed:
                if self.managed:
                    missing.append(f"{svc.name} unknown")
                continue
            if not st.active:
                missing.append(f"{svc.name} {st.active_state}")
                continue
            wid = svc.worker_id(self.machine_id)
            if wid:
                entry = self.workers.get(wid) or {}
                if not entry.get("alive"):
                    missing.append(f"{svc.name} not reporting")
                elif not entry.get("service_healthy"):
                    missing.append(f"{svc.name}: {entry.get('connector') or 'its service'} not answering")
        return missing

    def ready(self) -> bool:
        """Able to serve: started, and nothing down (a degraded machine, Redis away say, is not ready)."""
        return self.phase is Phase.READY

    def settle_phase(self) -> bool:
        """After startup, flip between READY and DEGRADED as checks pass or fail; True when the phase changed."""
        if self.phase not in (Phase.READY, Phase.DEGRADED):
            return False
        new = Phase.READY if self.healthy() and not self.not_ready() else Phase.DEGRADED
        changed = new is not self.phase
        self.phase = new
        return changed
