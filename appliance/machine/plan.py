"""The service plan: which systemd unit instances a machine of a given type runs.

The plan is pure data computed from the machine type, the GPUs found and the enabled connectors; the units layer
(`appliance units`) and the supervisor both read it, so it must be deterministic for the same inputs.

GPU machine: per GPU i, `comfyui@i` (ComfyUI on port base_port+i) and `worker@gpu<i>`, which binds to it.
API machine: per enabled connector, `slots` workers named `worker@<connector><index>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from appliance.identity import (
    COMFYUI_TEMPLATE,
    WORKER_TEMPLATE,
    WorkerSlot,
    gpu_slot,
    service_name,
    unit_name,
    worker_id,
)

if TYPE_CHECKING:
    from appliance.config import Settings

#: ComfyUI instance i listens on DEFAULT_BASE_PORT + i unless configured otherwise.
DEFAULT_BASE_PORT = 8188


class MachineType(StrEnum):
    GPU = "gpu"
    API = "api"


class PlanError(ValueError):
    """The inputs describe no valid plan (an unknown machine type, a bad connector name, no GPU)."""


#: `machine.type` value that leaves the choice to the GPUs NVML finds at startup.
AUTO = "auto"


def resolve_machine_type(
    configured: MachineType | str, gpu_count: int, *, cpu_mode: bool = False
) -> MachineType:
    """The machine type to run: `auto` becomes gpu when NVML found GPUs (or a CPU-run ComfyUI is asked for with
    `cpu_mode`), else api; gpu and api stay what they are. PlanError for anything else."""
    if configured == AUTO:
        return MachineType.GPU if gpu_count > 0 or cpu_mode else MachineType.API
    try:
        return MachineType(configured)
    except ValueError:
        raise PlanError(f"unknown machine type {configured!r} (expected auto, gpu or api)") from None


@dataclass(frozen=True)
class PlannedService:
    """One unit instance of the plan. `kind` is "comfyui" or "worker"."""

    name: str
    kind: str
    gpu: int | None = None
    port: int | None = None
    slot: str | None = None
    connector: str | None = None
    binds_to: str | None = None
    cpu: bool = False

    @property
    def unit(self) -> str:
        return unit_name(self.name)

    def worker_id(self, machine_id: str) -> str | None:
        return worker_id(machine_id, self.slot) if self.kind == "worker" and self.slot else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "unit": self.unit, "kind": self.kind}
        for key in ("gpu", "port", "slot", "connector", "binds_to"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.cpu:
            out["cpu"] = True
        return out


@dataclass(frozen=True)
class ServicePlan:
    machine_id: str
    machine_type: MachineType
    services: tuple[PlannedService, ...] = field(default_factory=tuple)

    @property
    def units(self) -> list[str]:
        return [s.unit for s in self.services]

    @property
    def workers(self) -> list[PlannedService]:
        return [s for s in self.services if s.kind == "worker"]

    def worker_ids(self) -> list[str]:
        return [wid for s in self.services if (wid := s.worker_id(self.machine_id))]

    def by_unit(self, unit: str) -> PlannedService | None:
        unit = unit_name(unit)
        return next((s for s in self.services if s.unit == unit), None)

    def dependents(self, service: PlannedService) -> list[PlannedService]:
        """The services bound to `service` (a ComfyUI instance's worker): they stop when it stops."""
        return [s for s in self.services if s.binds_to == service.unit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine_id": self.machine_id,
            "machine_type": self.machine_type.value,
            "services": [s.to_dict() for s in self.services],
        }


@dataclass(frozen=True)
class ConnectorSlots:
    """How many workers a connector gets on this machine."""

    name: str
    slots: int = 1
    enabled: bool = True


def _check_connector_name(name: str) -> None:
    # The name becomes part of a unit instance and a worker id: keep it to what both accept unescaped.
    if not name or not name[0].isalpha() or not all(c.isalnum() or c == "_" for c in name):
        raise PlanError(
            f"connector name {name!r} must start with a letter and hold only letters, digits, '_'"
        )


def gpu_services(
    gpus: Iterable[int], base_port: int = DEFAULT_BASE_PORT, cpu: bool = False
) -> list[PlannedService]:
    services: list[PlannedService] = []
    for i in gpus:
        comfy = PlannedService(
            name=service_name(COMFYUI_TEMPLATE, i), kind="comfyui", gpu=i, port=base_port + i, cpu=cpu
        )
        services.append(comfy)
        slot = gpu_slot(i)
        services.append(
            PlannedService(
                name=service_name(WORKER_TEMPLATE, slot.name),
                kind="worker",
                slot=slot.name,
                gpu=i,
                connector=slot.connector,
                binds_to=comfy.unit,
            )
        )
    return services


def connector_services(connectors: Iterable[ConnectorSlots]) -> list[PlannedService]:
    services: list[PlannedService] = []
    for conn in sorted(connectors, key=lambda c: c.name):
        _check_connector_name(conn.name)
        if not conn.enabled or conn.slots <= 0:
            continue
        for index in range(conn.slots):
            slot = WorkerSlot(conn.name, index).name
            services.append(
                PlannedService(
                    name=service_name(WORKER_TEMPLATE, slot), kind="worker", slot=slot, connector=conn.name
                )
            )
    return services


def compute_plan(
    machine_id: str,
    machine_type: MachineType | str,
    *,
    gpu_count: int,
    gpus: Iterable[int] | None = None,
    connectors: Iterable[ConnectorSlots] | Mapping[str, ConnectorSlots] = (),
    base_port: int = DEFAULT_BASE_PORT,
    cpu: bool = False,
    cpu_instances: int = 0,
) -> ServicePlan:
    """The plan for one machine.

    `gpu_count` is what NVML found; `gpus`, when given, are the configured indices and replace it (the NixOS
    module starts exactly those units, so the plan must name the same ones). `cpu` runs every ComfyUI with `--cpu`. On a GPU machine without GPUs
    `cpu_instances` ComfyUI instances run with `--cpu` (development), and with neither the plan is refused
    rather than silently empty. `machine_type` `auto` is resolved from `gpu_count` (resolve_machine_type).
    """
    mtype = resolve_machine_type(machine_type, gpu_count, cpu_mode=cpu_instances > 0)
    conns = list(connectors.values()) if isinstance(connectors, Mapping) else list(connectors)
    services: list[PlannedService] = []
    if mtype is MachineType.GPU:
        indices = list(range(gpu_count)) if gpus is None else sorted(gpus)
        if indices and base_port + indices[-1] > 65535:
            raise PlanError(f"comfyui.base_port {base_port} + GPU index {indices[-1]} is beyond port 65535")
        if indices:
            services += gpu_services(indices, base_port, cpu=cpu)
        elif cpu_instances > 0:
            services += gpu_services(range(cpu_instances), base_port, cpu=True)
        else:
            raise PlanError(
                "machine.type is gpu but no GPU was found: set machine.gpu_cpu_mode for a CPU-run "
                "ComfyUI (development) or use machine.type api"
            )
    else:
        services += connector_services(conns)
    return ServicePlan(machine_id=machine_id, machine_type=mtype, services=tuple(services))


def plan_from_settings(settings: Settings, gpu_count: int) -> ServicePlan:
    """The plan for the configured machine, given how many GPUs NVML found (ignored when `machine.gpus` is set)."""
    m = settings.machine
    conns = [ConnectorSlots(name, c.slots, c.enabled) for name, c in settings.connectors.items()]
    return compute_plan(
        m.id,
        m.type,
        gpu_count=gpu_count,
        gpus=m.gpus,
        connectors=conns,
        base_port=settings.comfyui.base_port,
        cpu=settings.comfyui.cpu,
        cpu_instances=1 if (m.gpu_cpu_mode or settings.comfyui.cpu) else 0,
    )
