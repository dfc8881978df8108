"""The service plan per machine type."""

from __future__ import annotations

import pytest

from appliance.config import Settings
from appliance.identity import unit_name
from appliance.machine.plan import (
    ConnectorSlots,
    MachineType,
    PlanError,
    compute_plan,
    plan_from_settings,
)


def test_gpu_plan_pairs_comfyui_and_worker_per_gpu() -> None:
    plan = compute_plan("m1", "gpu", gpu_count=2, base_port=9000)
    assert plan.to_dict() == {
        "machine_id": "m1",
        "machine_type": "gpu",
        "services": [
            {
                "name": "comfyui@0",
                "unit": "appliance-comfyui@0.service",
                "kind": "comfyui",
                "gpu": 0,
                "port": 9000,
            },
            {
                "name": "worker@gpu0",
                "unit": "appliance-worker@gpu0.service",
                "kind": "worker",
                "gpu": 0,
                "slot": "gpu0",
                "connector": "comfyui",
                "binds_to": "appliance-comfyui@0.service",
            },
            {
                "name": "comfyui@1",
                "unit": "appliance-comfyui@1.service",
                "kind": "comfyui",
                "gpu": 1,
                "port": 9001,
            },
            {
                "name": "worker@gpu1",
                "unit": "appliance-worker@gpu1.service",
                "kind": "worker",
                "gpu": 1,
                "slot": "gpu1",
                "connector": "comfyui",
                "binds_to": "appliance-comfyui@1.service",
            },
        ],
    }
    assert plan.worker_ids() == ["m1-gpu0", "m1-gpu1"]
    comfy1 = plan.by_unit("comfyui@1")
    assert comfy1 is not None and [s.name for s in plan.dependents(comfy1)] == ["worker@gpu1"]


def test_gpu_machine_without_gpu_needs_cpu_mode() -> None:
    with pytest.raises(PlanError, match="no GPU"):
        compute_plan("m1", MachineType.GPU, gpu_count=0)
    plan = compute_plan("m1", "gpu", gpu_count=0, cpu_instances=1)
    assert [(s.name, s.cpu) for s in plan.services] == [("comfyui@0", True), ("worker@gpu0", False)]
    assert plan.services[0].to_dict()["cpu"] is True


def test_api_plan_has_slots_per_enabled_connector() -> None:
    plan = compute_plan(
        "api-1",
        "api",
        gpu_count=4,
        connectors=[
            ConnectorSlots("openai", 2),
            ConnectorSlots("echo", 1),
            ConnectorSlots("replicate", 3, enabled=False),
            ConnectorSlots("runpod", 0),
        ],
    )
    assert [s.name for s in plan.services] == ["worker@echo0", "worker@openai0", "worker@openai1"]
    assert plan.worker_ids() == ["api-1-echo0", "api-1-openai0", "api-1-openai1"]
    assert all(s.kind == "worker" and s.binds_to is None for s in plan.services)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(PlanError, match="unknown machine type 'tpu'"):
        compute_plan("m", "tpu", gpu_count=0)
    with pytest.raises(PlanError, match="connector name 'bad-name'"):
        compute_plan("m", "api", gpu_count=0, connectors=[ConnectorSlots("bad-name", 1)])


def test_unit_names_normalize() -> None:
    for name in ("worker@gpu0", "appliance-worker@gpu0", "appliance-worker@gpu0.service"):
        assert unit_name(name) == "appliance-worker@gpu0.service"


def test_plan_from_settings() -> None:
    s = Settings.model_validate(
        {"machine": {"id": "box", "type": "api"}, "connectors": {"echo": {"enabled": True, "slots": 2}}}
    )
    assert plan_from_settings(s, gpu_count=0).worker_ids() == ["box-echo0", "box-echo1"]
    s = Settings.model_validate(
        {"machine": {"id": "box", "type": "gpu", "gpu_cpu_mode": True}, "comfyui": {"base_port": 8200}}
    )
    plan = plan_from_settings(s, gpu_count=0)
    assert [(x.name, x.port) for x in plan.services] == [("comfyui@0", 8200), ("worker@gpu0", None)]


def test_configured_gpus_are_the_plan() -> None:
    """machine.gpus (what the NixOS module writes) decides the units, whatever NVML counts: the module starts
    comfyui@0 and @2 for `gpus = [ 0 2 ]` and the supervisor must expect exactly those (issue 11, defect 4)."""
    s = Settings.model_validate({"machine": {"id": "box", "type": "gpu", "gpus": [2, 0]}})
    plan = plan_from_settings(s, gpu_count=3)
    assert plan.units == [
        "appliance-comfyui@0.service",
        "appliance-worker@gpu0.service",
        "appliance-comfyui@2.service",
        "appliance-worker@gpu2.service",
    ]
    assert [x.port for x in plan.services if x.kind == "comfyui"] == [8188, 8190]
    # With gpus unset, NVML's count decides as before.
    s = Settings.model_validate({"machine": {"id": "box", "type": "gpu"}})
    assert len(plan_from_settings(s, gpu_count=3).services) == 6


def test_configured_gpus_beyond_the_port_range_are_refused() -> None:
    s = Settings.model_validate({"machine": {"type": "gpu", "gpus": [0, 3]}, "comfyui": {"base_port": 65533}})
    with pytest.raises(PlanError, match="65533 \\+ GPU index 3 is beyond port 65535"):
        plan_from_settings(s, gpu_count=0)


def test_gpus_listed_twice_are_a_settings_error() -> None:
    with pytest.raises(ValueError, match="lists a GPU index twice"):
        Settings.model_validate({"machine": {"type": "gpu", "gpus": [1, 1]}})
