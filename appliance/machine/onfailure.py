"""`appliance machine on-failure UNIT`: run by appliance-onfailure@.service when a service gave up restarting.

A worker unit's jobs go back to the queue at once (instead of waiting for their leases to expire); a ComfyUI
unit's failure takes down the worker bound to it, so that worker's jobs go back too. Then `service_failed` is
published with the unit's final result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from appliance.config import Settings
from appliance.identity import (
    COMFYUI_TEMPLATE,
    WORKER_TEMPLATE,
    gpu_slot,
    service_of_unit,
    unit_name,
    worker_id,
)
from appliance.machine.plan import PlanError
from appliance.machine.registry import MachineRegistry
from appliance.machine.systemd import SystemdUnits
from appliance.queue.factory import connect_queue


@dataclass(frozen=True)
class FailedUnit:
    unit: str
    service: str
    #: Workers whose jobs must go back: the worker itself, or the worker bound to a failed ComfyUI.
    worker_ids: tuple[str, ...]


def resolve_unit(machine_id: str, name: str) -> FailedUnit:
    """Map `worker@gpu0`, `appliance-comfyui@1.service`, ... to the workers it affects."""
    # %i of the handler unit arrives systemd-escaped ("\x2d" for "-") when the unit name was escaped.
    unit = unit_name(re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name.strip()))
    service = service_of_unit(unit)
    template, _, instance = service.partition("@")
    if service == "machine":
        # The supervisor itself gave up: its workers may still be running, so no job is taken from them.
        return FailedUnit(unit, service, ())
    if not instance:
        raise PlanError(f"unit {name!r} is not an instance of appliance-worker@ or appliance-comfyui@")
    if template == WORKER_TEMPLATE:
        return FailedUnit(unit, service, (worker_id(machine_id, instance),))
    if template == COMFYUI_TEMPLATE:
        if not instance.isdigit():
            raise PlanError(f"unit {name!r}: a ComfyUI instance is a GPU index")
        return FailedUnit(unit, service, (gpu_slot(int(instance)).worker_id(machine_id),))
    raise PlanError(f"unit {name!r} is not an appliance worker or ComfyUI unit")


async def handle_failure(
    settings: Settings, name: str, *, systemd: SystemdUnits | None = None
) -> dict[str, Any]:
    failed = resolve_unit(settings.machine.id, name)
    systemd = systemd or SystemdUnits()
    state = (await systemd.states([failed.unit]))[failed.unit]
    conn = settings.redis_connection()
    queue = await connect_queue(settings, connection=conn)
    try:
        returned = {
            wid: await queue.return_jobs_of_worker(wid, "service_failed") for wid in failed.worker_ids
        }
        registry = MachineRegistry(
            queue.client,
            settings.machine.id,
            ttl_s=settings.machine.registration_ttl_s,
            secrets=[conn.password] if conn.password else [],
        )
        return await registry.publish_event(
            "service_failed",
            service=failed.service,
            unit=failed.unit,
            reason="restart limit reached",
            result=state.result or None,
            restarts=state.restarts,
            active_state=state.active_state,
            jobs_returned=returned,
        )
    finally:
        await queue.close()
