"""Who a worker process is: its slot (`gpu0`, `openai1`, `echo0`) and its worker id (`<machine id>-<slot>`).

Slots are what systemd knows (`appliance-worker@<slot>.service`) and what the machine plan names; the worker id
is what the queue knows. Both are derived here and nowhere else in the worker.
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
        return f"{machine_id}-{self.name}"


def parse_slot(slot: str) -> WorkerSlot:
    """`gpu3` → ComfyUI on GPU 3; `openai1` → connector openai, index 1 (the systemd instance name)."""
    if match := _GPU_SLOT_RE.match(slot):
        return WorkerSlot(GPU_CONNECTOR, int(match["index"]), gpu=True)
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
        return WorkerSlot(GPU_CONNECTOR, gpu, gpu=True)
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
