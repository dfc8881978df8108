"""One identity module (appliance/identity.py) derives every worker id and unit name: the machine plan, the
OnFailure handler and the worker itself agree on them for every planned service (issue 13 item 5)."""

from __future__ import annotations

from appliance.identity import parse_slot, unit_name, worker_id
from appliance.machine.onfailure import resolve_unit
from appliance.machine.plan import ConnectorSlots, MachineType, compute_plan


def test_plan_onfailure_and_worker_agree_on_every_name() -> None:
    machine = "m-7"
    gpu = compute_plan(machine, MachineType.GPU, gpu_count=2, gpus=[0, 3])
    api = compute_plan(
        machine,
        MachineType.API,
        gpu_count=0,
        connectors=[ConnectorSlots("openai", 2), ConnectorSlots("replicate", 1), ConnectorSlots("echo", 1)],
    )
    workers = [s for plan in (gpu, api) for s in plan.workers]
    assert len(workers) == 6
    for service in workers:
        assert service.slot is not None
        slot = parse_slot(service.slot)  # what `appliance worker --slot` (the unit's %i) makes of it
        assert slot.worker_id(machine) == service.worker_id(machine) == worker_id(machine, service.slot)
        assert slot.unit == service.unit == unit_name(service.name)
        assert slot.connector == service.connector
        assert resolve_unit(machine, service.unit).worker_ids == (slot.worker_id(machine),)
    for comfy in (s for s in gpu.services if s.kind == "comfyui"):
        (bound,) = gpu.dependents(comfy)
        assert resolve_unit(machine, comfy.unit).worker_ids == (bound.worker_id(machine),)
    assert gpu.worker_ids() == ["m-7-gpu0", "m-7-gpu3"]
    assert [s.unit for s in api.workers][:1] == ["appliance-worker@echo0.service"]
