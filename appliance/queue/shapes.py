"""Shapes: the canonical form of a job's requirements, and which workers can serve them.

Jobs with equal requirements share one ready index (a *shape*). Matching happens here, once per
(worker, shape) pair when either appears, never per job at claim time (Nomad's computed node classes,
Ray's scheduling classes).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from appliance.queue.models import Capabilities, Isolation, JobSpec

#: Numeric minimums are rounded UP to these steps so near-equal requests share a shape. Rounding up never
#: sends a job to a worker that has less than it asked for; it may skip a worker with a few spare GB less.
GPU_MEMORY_BUCKETS_GB = (1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 141, 192, 256)
RAM_BUCKETS_GB = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
CPU_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def bucket(value: float | None, steps: tuple[float, ...]) -> float | None:
    """Round a minimum up to the next step (values above the last step round up to an integer)."""
    if value is None or value <= 0:
        return None
    index = bisect.bisect_left(steps, value)
    if index < len(steps):
        return steps[index]
    return float(math.ceil(value))


def shape_record(spec: JobSpec) -> dict[str, Any]:
    """The canonical requirement record of a job: only keys that influence matching, sorted, bucketed."""
    req = spec.requirements
    record: dict[str, Any] = {"service": spec.service}
    for key, value in (
        ("gpu_memory_gb", bucket(req.gpu_memory_gb, GPU_MEMORY_BUCKETS_GB)),
        ("ram_gb", bucket(req.ram_gb, RAM_BUCKETS_GB)),
        ("cpu_cores", bucket(req.cpu_cores, CPU_BUCKETS)),
        # GPU counts are small integers: exact, no bucket (a 3-GPU job must not need a 4-GPU worker).
        ("gpu_count", req.gpu_count or None),
        ("machine_type", req.machine_type),
        ("pool", spec.pool or req.pool),
        ("region", req.region),
        ("workflow", req.workflow),
    ):
        if value is not None:
            record[key] = value
    if req.models:
        record["models"] = sorted(req.models)
    if req.tags:
        record["tags"] = sorted(req.tags)
    if req.not_tags:
        record["not_tags"] = sorted(req.not_tags)
    if req.isolation is not Isolation.NONE:
        # The customer joins the shape only when the job asks for isolation: otherwise every customer would
        # be its own shape and a generic worker would have to watch thousands of indexes.
        record["isolation"] = req.isolation.value
        record["customer"] = spec.customer_id
    return record


def shape_id(record: dict[str, Any]) -> str:
    """A stable id for a canonical record: the same requirements always give the same shape."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def shape_of(spec: JobSpec) -> tuple[str, dict[str, Any]]:
    record = shape_record(spec)
    return shape_id(record), record


def matches(caps: Capabilities, record: dict[str, Any]) -> bool:
    """Can a worker with `caps` run every job of the shape `record`?"""
    service = record.get("service")
    if service not in caps.services:
        return False
    if record.get("gpu_memory_gb", 0) > caps.gpu_memory_gb:
        return False
    if record.get("ram_gb", 0) > caps.ram_gb:
        return False
    if record.get("cpu_cores", 0) > caps.cpu_cores:
        return False
    if record.get("gpu_count", 0) > caps.gpu_count:
        return False
    if "machine_type" in record and record["machine_type"] != caps.machine_type:
        return False
    models = record.get("models")
    if models and caps.models != "all":
        available = set(caps.models.get(service, [])) if isinstance(caps.models, dict) else set()
        if not set(models) <= available:
            return False
    if "pool" in record and record["pool"] != caps.pool:
        return False
    if "region" in record and record["region"] != caps.region:
        return False
    tags = set(caps.tags)
    if not set(record.get("tags", ())) <= tags:
        return False
    if set(record.get("not_tags", ())) & tags:
        return False
    workflow = record.get("workflow")
    if caps.workflow_id is not None and workflow != caps.workflow_id:
        return False
    return _customer_allowed(caps, record)


def _customer_allowed(caps: Capabilities, record: dict[str, Any]) -> bool:
    isolation = Isolation(record.get("isolation", Isolation.NONE.value))
    customer = record.get("customer")
    if caps.customer_isolation is Isolation.STRICT:
        # A strict worker serves only the customers it lists, so it never takes an anonymous shape.
        return (
            customer is not None
            and customer in caps.allowed_customers
            and customer not in caps.denied_customers
        )
    if isolation is Isolation.STRICT:
        return False
    if isolation is Isolation.LOOSE:
        if caps.customer_isolation is Isolation.NONE:
            return False
        if caps.allowed_customers and customer not in caps.allowed_customers:
            return False
    return customer is None or customer not in caps.denied_customers


def explain_mismatch(caps: Capabilities, record: dict[str, Any]) -> str | None:
    """Why a worker cannot serve a shape (for `job get` and the unworkable report), or None if it can."""
    if matches(caps, record):
        return None
    service = record.get("service")
    if service not in caps.services:
        return f"service {service!r} not offered"
    for key, have in (
        ("gpu_memory_gb", caps.gpu_memory_gb),
        ("ram_gb", caps.ram_gb),
        ("cpu_cores", caps.cpu_cores),
        ("gpu_count", caps.gpu_count),
    ):
        if record.get(key, 0) > have:
            return f"{key} {have} < {record[key]}"
    if "machine_type" in record and record["machine_type"] != caps.machine_type:
        return f"machine_type {caps.machine_type} is not {record['machine_type']}"
    if record.get("models"):
        return "models missing or pool/region/tags/isolation differ"
    return "pool, region, tags, workflow pin or customer isolation differ"


@dataclass
class WorkerClass:
    """The shapes one worker serves, as claim.lua sees them: a SET in Redis named by a hash of the list.

    Workers with equal shape lists share one class (and one SET). `hint` holds the shapes claim.lua last named
    as this class's best; the next claim passes their ready indexes as its candidates.
    """

    class_id: str
    shapes: tuple[str, ...]
    hint: tuple[str, ...] = ()

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.hint or self.shapes[:1]

    def take_hint(self, hint: str) -> None:
        """Keep claim.lua's hint: the class's best shapes, comma-separated (only shapes of this class)."""
        self.hint = tuple(hint.split(",")) if hint else ()

    @classmethod
    def of(cls, shapes: tuple[str, ...]) -> WorkerClass:
        ordered = tuple(sorted(set(shapes)))
        digest = hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:16]
        return cls(class_id=digest, shapes=ordered)
