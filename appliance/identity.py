"""Who a process is: a worker's slot (`gpu0`, `openai1`, `echo0`), its worker id (`<machine id>-<slot>`) and the
systemd unit names (`appliance-worker@<slot>.service`, `appliance-comfyui@<gpu>.service`).

Slots are what systemd knows and what the machine plan names; the worker id is what the queue knows. All of
them are derived here and nowhere else: the worker, the machine plan and the OnFailure handler call these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: `gpu<N>`: the worker of the ComfyUI instance on GPU N.
_GPU_SLOT_RE = re.compile(r"^gpu(?P<index>[0-9]+)$")
#: `<connector><N>`: worker N of an API connector (the name may hold digits and `_`, the index is the tail).
_CONNECTOR_SLOT_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]*?)(?P<index>[0-9]+)$")

#: The connector that serves GPU slots.
GPU_CONNECTOR = "comfyui"
#: Every unit of the appliance is named `appliance-<template>[@<instance>].service`.
UNIT_PREFIX = "appliance-"
UNIT_SUFFIX = ".service"
#: The unit templates: a worker per slot, a ComfyUI instance per GPU.
WORKER_TEMPLATE = "worker"
COMFYUI_TEMPLATE = "comfyui"
ONFAILURE_TEMPLATE = "onfailure"
#: The supervisor's own unit is not a template instance: `appliance-machine.service`.
MACHINE_SERVICE = "machine"
#: An instance unit's full name; instance names go into unit names and worker ids unescaped, so they keep to
#: what both accept.
_INSTANCE_UNIT_RE = re.compile(
    rf"^{re.escape(UNIT_PREFIX)}(?P<template>[a-z]+)@(?P<instance>[A-Za-z0-9_]+){re.escape(UNIT_SUFFIX)}$"
)


def worker_id(machine_id: str, slot: str) -> str:
    """The queue's name of the worker in `slot` of machine `machine_id`."""
    return f"{machine_id}-{slot}"


def service_name(template: str, instance: str | int) -> str:
    """`worker@gpu0`, `comfyui@1`: a unit instance without prefix and suffix (how the plan names services)."""
    return f"{template}@{instance}"


def unit_name(service: str) -> str:
    """The full unit of a service; also accepts `appliance-worker@gpu0` and the full name itself."""
    if not service.endswith(UNIT_SUFFIX):
        service = f"{service}{UNIT_SUFFIX}"
    if not service.startswith(UNIT_PREFIX):
        service = f"{UNIT_PREFIX}{service}"
    return service


def template_unit(template: str) -> str:
    """`worker` → `appliance-worker@.service`: the template file its instances are made from."""
    return unit_name(service_name(template, ""))


def template_of_unit(unit: str) -> str:
    """`appliance-worker@gpu0.service` → `appliance-worker@.service`: the template an instance unit comes from."""
    return template_unit(service_of_unit(unit).partition("@")[0])


def worker_unit(slot: str) -> str:
    """`gpu0` → `appliance-worker@gpu0.service`."""
    return unit_name(service_name(WORKER_TEMPLATE, slot))


def comfyui_unit(gpu: int) -> str:
    """`0` → `appliance-comfyui@0.service`: the ComfyUI instance on GPU `gpu`."""
    return unit_name(service_name(COMFYUI_TEMPLATE, gpu))


def instance_of_unit(unit: str) -> tuple[str, str] | None:
    """`appliance-worker@gpu0.service` → (`worker`, `gpu0`); None for a name that is no template instance."""
    match = _INSTANCE_UNIT_RE.match(unit)
    return (match["template"], match["instance"]) if match else None


def slot_of_worker(machine_id: str, worker_id: str) -> str:
    """The slot of a worker of machine `machine_id`, the inverse of `worker_id()` (an id without the machine's
    prefix is returned whole)."""
    return worker_id.removeprefix(f"{machine_id}-")


def service_of_unit(unit: str) -> str:
    """`appliance-worker@gpu0.service` → `worker@gpu0`."""
    return unit.removeprefix(UNIT_PREFIX).removesuffix(UNIT_SUFFIX)


class SlotError(ValueError):
    """A slot, connector name or index that names no worker; the message says what is wrong."""


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process's place on its machine."""

    #: The connector it runs (`comfyui` for GPU slots).
    connector: str
    #: GPU index for GPU slots, else the connector's worker index.
    index: int
    #: True for `gpu<N>` slots (ComfyUI on port base_port + N).
    gpu: bool = False

    @property
    def name(self) -> str:
        return f"gpu{self.index}" if self.gpu else f"{self.connector}{self.index}"

    def worker_id(self, machine_id: str) -> str:
        return worker_id(machine_id, self.name)

    @property
    def unit(self) -> str:
        return worker_unit(self.name)


def gpu_slot(gpu: int) -> WorkerSlot:
    """The slot of the worker of the ComfyUI instance on GPU `gpu`."""
    return WorkerSlot(GPU_CONNECTOR, gpu, gpu=True)


def parse_slot(slot: str) -> WorkerSlot:
    """`gpu3` → ComfyUI on GPU 3; `openai1` → connector openai, index 1 (the systemd instance name)."""
    if match := _GPU_SLOT_RE.match(slot):
        return gpu_slot(int(match["index"]))
    if match := _CONNECTOR_SLOT_RE.match(slot):
        name = match["name"].lower()
        if name == GPU_CONNECTOR:
            raise SlotError(f"slot {slot!r}: ComfyUI workers use gpu<N> slots (e.g. gpu0)")
        return WorkerSlot(name, int(match["index"]))
    raise SlotError(f"slot {slot!r} is not gpu<N> or <connector><N> (e.g. gpu0, openai1, echo0)")


def slot_from_arguments(
    *, slot: str | None, gpu: int | None, connector: str | None, index: int | None
) -> WorkerSlot:
    """The slot named by exactly one of `--slot`, `--gpu N` or `--connector NAME [--index N]`."""
    given = [
        flag
        for flag, value in (("--slot", slot), ("--gpu", gpu), ("--connector", connector))
        if value is not None
    ]
    if len(given) != 1:
        raise SlotError(
            "give exactly one of --slot SLOT, --gpu N or --connector NAME"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    if index is not None and connector is None:
        raise SlotError("--index goes with --connector NAME")
    if slot is not None:
        return parse_slot(slot)
    if gpu is not None:
        if gpu < 0:
            raise SlotError(f"--gpu must be 0 or more, not {gpu}")
        return gpu_slot(gpu)
    assert connector is not None
    if index is not None and index < 0:
        raise SlotError(f"--index must be 0 or more, not {index}")
    name = connector.lower()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise SlotError(
            f"--connector {connector!r}: a connector name starts with a letter and holds letters, "
            "digits and '_'"
        )
    if name == GPU_CONNECTOR:
        raise SlotError("ComfyUI workers are started with --gpu N, not --connector comfyui")
    return WorkerSlot(name, index or 0)
