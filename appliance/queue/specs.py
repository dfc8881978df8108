"""One declarative spec per Lua script: the KEYS it takes, in its header's order, and whether it takes the
common ARGV prefix. Every caller builds KEYS from here; tests/queue/test_script_specs.py checks each spec
against its script's `KEYS[n]  name` header lines, so a key added to a script cannot be forgotten here.

A key is named as in the header, which is the QueueKeys attribute of that name, except:
`ready` and `idle` (of the job's or the batch's shape), `class` (the worker class), `tenant` (the job's
customer) and a variable tail: the `ready` indexes of claim's candidate shapes, or the `idle` sets of an
idle worker's shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.queue.keys import QueueKeys

#: The per-job columns, in the order QueueKeys.job_columns() gives them (reap.lua takes them all).
JOB_COLUMNS = (
    "spec",
    "meta",
    "state",
    "attempts",
    "owner",
    "progress",
    "results",
    "errors",
    "info",
    "cancels",
    "customer",
    "parents",
)


#: The keys of per-customer limits the claim reads and writes (includes/limit.lua) ...
LIMIT_KEYS = "limits inflight charged buckets limited limits_due"
#: ... and those every script that ends a lease updates (includes/uncharge.lua).
UNCHARGE_KEYS = "charged inflight limited limits_due"


@dataclass(frozen=True)
class ScriptSpec:
    name: str
    keys: tuple[str, ...]
    #: Takes ARGV[1..4] = channel prefix, queue name, events mode, events maxlen (scripts that emit or publish).
    common: bool = True
    #: KEYS continue with one key per shape of `candidates` (claim: ready indexes; idle: idle sets).
    candidate_tail: bool = False
    #: What the tail holds per shape: "ready", "idle", or "ready+idle" (both, in pairs).
    tail: str = "ready"

    def build(
        self,
        k: QueueKeys,
        *,
        shape: str = "",
        class_id: str = "",
        candidates: Sequence[str] = (),
        customer: str = "",
        idle: Sequence[str] = (),
    ) -> list[str]:
        """The KEYS of one call: `shape` for `ready`, `class_id` for `class`, `customer` for `tenant`,
        `candidates` for claim's tail, `idle` for the idle sets that follow it (finish_claim registering a worker:
        its shapes)."""
        out = []
        for name in self.keys:
            if name in ("ready", "idle"):
                if not shape:
                    raise ValueError(f"{self.name}.lua needs the job's shape for its {name} key")
                out.append(k.ready(shape) if name == "ready" else k.idle(shape))
            elif name == "class":
                out.append(k.worker_class(class_id))
            elif name == "tenant":
                out.append(k.tenant_jobs(customer))
            else:
                out.append(str(getattr(k, name)))
        if self.candidate_tail:
            for s in candidates:
                if "ready" in self.tail:
                    out.append(k.ready(s))
                if "idle" in self.tail:
                    out.append(k.idle(s))
        out += [k.idle(s) for s in idle]
        return out


def _spec(name: str, keys: str, *, tail: str = "ready", **flags: bool) -> ScriptSpec:
    return ScriptSpec(name, tuple(keys.split()), tail=tail, **flags)


SPECS: dict[str, ScriptSpec] = {
    s.name: s
    for s in (
        _spec(
            "submit",
            "spec meta state ready heads shapes counts events idle waiting fair_finish fair_weights delayed "
            "customer tenant children blocked parents errors info done dead",
        ),
        _spec(
            "claim",
            "heads class spec meta state attempts owner leases counts events paused held customer "
            + LIMIT_KEYS,
            candidate_tail=True,
        ),
        _spec("heartbeat", "owner leases cancels workers_seen shape_live", common=False),
        _spec("progress", "owner state progress cancels events"),
        _spec(
            "complete",
            "owner leases state results info done counts events cancels meta delayed errors dead children blocked "
            "parents " + UNCHARGE_KEYS,
        ),
        _spec(
            "fail",
            "owner leases state attempts meta errors delayed ready heads done dead counts events info cancels "
            "progress idle waiting children blocked parents " + UNCHARGE_KEYS,
        ),
        _spec(
            "release",
            "owner leases state attempts meta ready heads counts events cancels done dead errors info progress "
            "idle waiting children blocked parents delayed " + UNCHARGE_KEYS,
        ),
        _spec(
            "cancel",
            "state meta ready heads delayed owner cancels done counts events info errors dead children blocked "
            "parents customer limited",
        ),
        _spec("reap", "reaper_lock leases delayed done dead " + " ".join(JOB_COLUMNS), common=False),
        _spec(
            "requeue",
            "ready heads leases delayed owner state attempts meta errors done dead counts events info cancels "
            "progress idle waiting children blocked parents " + UNCHARGE_KEYS,
        ),
        _spec("schedule_save", "schedules schedule_due", common=False),
        _spec("schedule_due", "schedule_due", common=False),
        _spec("schedule_advance", "schedule_due", common=False),
        _spec("unhold", "held state meta ready heads idle waiting"),
        _spec(
            "unlimit",
            "limits inflight buckets limited limits_due state meta heads waiting",
            candidate_tail=True,
            tail="ready+idle",
        ),
        _spec("limits_count", "limits owner customer charged inflight workers limits_due", common=False),
        _spec("idle", "heads waiting paused", common=False, candidate_tail=True, tail="idle"),
        _spec("wake", "ready idle waiting"),
        _spec("retry", "state meta ready heads done dead attempts info counts events idle waiting"),
    )
}
# complete.lua then claim.lua in one call: their keys, each once, complete's first, then what registering the
# worker as idle adds (finish_claim.lua's header).
SPECS["finish_claim"] = ScriptSpec(
    "finish_claim",
    tuple(dict.fromkeys([*SPECS["complete"].keys, *SPECS["claim"].keys, "waiting"])),
    candidate_tail=True,
)
# finish_claim.lua's quiet path alone, with the keys it touches or checks (finish_claim_quiet.lua's header).
SPECS["finish_claim_quiet"] = _spec(
    "finish_claim_quiet",
    "owner leases state results info done counts events cancels meta children charged heads class spec attempts "
    "paused limits waiting",
    candidate_tail=True,
)
