"""One identity module (appliance/identity.py) derives every worker id and unit name: the machine plan, the
OnFailure handler, the unit installer, the supervisor and the worker itself agree on them for every planned
service (issue 13 item 5)."""

from __future__ import annotations

from appliance.identity import (
    instance_of_unit,
    parse_slot,
    service_of_unit,
    slot_of_worker,
    template_of_unit,
    unit_name,
    worker_id,
    worker_unit,
)
from appliance.machine.onfailure import resolve_unit
from appliance.machine.plan import ConnectorSlots, MachineType, compute_plan
from appliance.units import install


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
        # the supervisor asks systemd about this unit for the worker id it finds registered
        assert worker_unit(slot_of_worker(machine, service.worker_id(machine))) == service.unit
        install.check_plan_unit(service.unit)
        template, instance = instance_of_unit(service.unit) or ("", "")
        assert f"{template}@{instance}" == service.name == service_of_unit(service.unit)
        assert template_of_unit(service.unit) == install.WORKER_TEMPLATE
    for comfy in (s for s in gpu.services if s.kind == "comfyui"):
        (bound,) = gpu.dependents(comfy)
        assert resolve_unit(machine, comfy.unit).worker_ids == (bound.worker_id(machine),)
        # the installer binds that worker to this very ComfyUI unit
        binding = install.comfyui_binding(parse_slot(bound.slot or "").name)
        assert binding is not None and f"BindsTo={comfy.unit}\n" in binding
        install.check_plan_unit(comfy.unit)
        assert template_of_unit(comfy.unit) == install.COMFYUI_TEMPLATE
    assert gpu.worker_ids() == ["m-7-gpu0", "m-7-gpu3"]
    assert [s.unit for s in api.workers][:1] == ["appliance-worker@echo0.service"]


def test_installer_template_names_come_from_identity() -> None:
    assert install.MACHINE_UNIT == unit_name("machine") == "appliance-machine.service"
    assert install.WORKER_TEMPLATE == "appliance-worker@.service"
    assert install.COMFYUI_TEMPLATE == "appliance-comfyui@.service"
    assert install.ONFAILURE_TEMPLATE == "appliance-onfailure@.service"
    assert instance_of_unit("appliance-worker@../x.service") is None
    assert instance_of_unit("sshd.service") is None
    assert install.comfyui_binding("openai0") is None and install.comfyui_binding("bad") is None
