"""A claimed job's stored body as a `Job`, without validating it a second time.

    job = claimed_job(body, attempt=2, worker_id="m-echo0")

The body is what the producer wrote: a `JobSpec` validated at submit, dumped by pydantic, plus `id` and `shape`.
Validating it again on every claim (`Job.model_validate_json`, with the `Requirements` validators and three
attribute writes after it) cost a busy worker about a sixth of its Python per job. A body of exactly that form
(known keys, each of the type the dump writes) is built field by field, with the same values, types and
`model_fields_set` that validation gives; anything else (an older or newer body, a hand-written one) goes
through `Job.model_validate_json` as before.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json

from appliance.queue.models import ClaimedJob, Isolation, Job, JobSpec, JobStatus, ParentFailure, Requirements

_new = object.__new__
_set = object.__setattr__

#: Keys a body written by the producer has: the spec's fields (run_at and delay_s are not Job fields, so
#: validation ignores them too), the id and the shape.
_BODY_KEYS = frozenset(JobSpec.model_fields) | {"id", "shape"}
_REQUIREMENT_KEYS = frozenset(Requirements.model_fields)
_JOB_FIELDS = frozenset(Job.model_fields)
#: Set by the claim on top of what the body holds (validation marks them set when they are assigned).
_CLAIM_SET = frozenset({"status", "attempts", "worker_id"})
_ISOLATIONS = {i.value: i for i in Isolation}
_PARENT_FAILURES = {p.value: p for p in ParentFailure}
_NUMBER = (int, float)


def _built(cls: type[Any], values: dict[str, Any], fields_set: set[str]) -> Any:
    """An instance of the pydantic model `cls` holding `values` (every field), as validation leaves it."""
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", fields_set)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _number(value: Any) -> bool:
    return value is None or (type(value) in _NUMBER)


def _text(value: Any) -> bool:
    return value is None or type(value) is str


def _strings(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _requirements(raw: Any) -> Requirements | None:
    """The body's requirements, or None when they are not in the form the dump writes."""
    if type(raw) is not dict or not raw.keys() <= _REQUIREMENT_KEYS:
        return None
    get = raw.get
    floats = (get("gpu_memory_gb"), get("ram_gb"))
    ints = (get("cpu_cores"), get("gpu_count"))
    lists = (get("models", []), get("tags", []), get("not_tags", []))
    isolation = _ISOLATIONS.get(get("isolation", "none"))
    machine = get("machine_type")
    if (
        isolation is None
        or not all(_number(v) for v in floats)
        or not all(v is None or type(v) is int for v in ints)
        or not all(_strings(v) for v in lists)
        or machine not in (None, "gpu", "api")
        or not (_text(get("pool")) and _text(get("region")) and _text(get("workflow")))
    ):
        return None
    gpu, ram = (None if v is None else float(v) for v in floats)
    values = {
        "gpu_memory_gb": gpu,
        "ram_gb": ram,
        "cpu_cores": ints[0],
        "gpu_count": ints[1],
        "machine_type": machine,
        "models": lists[0],
        "isolation": isolation,
        "pool": get("pool"),
        "region": get("region"),
        "tags": lists[1],
        "not_tags": lists[2],
        "workflow": get("workflow"),
    }
    if len(values) != len(_REQUIREMENT_KEYS):  # a field added to Requirements and not here: validate
        return None
    return _built(Requirements, values, set(raw))  # type: ignore[no-any-return]


def _fast(raw: Any, attempt: int, worker_id: str) -> Job | None:
    """The Job of a body in the producer's form, or None."""
    if type(raw) is not dict or not raw.keys() <= _BODY_KEYS:
        return None
    get = raw.get
    requirements = _requirements(get("requirements", {}))
    failure = _PARENT_FAILURES.get(get("on_parent_failure", "fail"))
    timeout = get("timeout_s")
    priority, retries = get("priority", 0), get("max_retries", 3)
    after = get("after", [])
    if (
        requirements is None
        or failure is None
        or type(get("id")) is not str
        or type(get("service")) is not str
        or type(get("shape", "")) is not str
        or type(get("payload", {})) is not dict
        or type(priority) is not int
        or type(retries) is not int
        or not _number(timeout)
        or not (_text(get("customer_id")) and _text(get("workflow_id")) and _text(get("pool")))
        or not _strings(after)
    ):
        return None
    values = {
        "id": raw["id"],
        "service": raw["service"],
        "payload": get("payload", {}),
        "priority": priority,
        "requirements": requirements,
        "customer_id": get("customer_id"),
        "workflow_id": get("workflow_id"),
        "pool": get("pool"),
        "max_retries": retries,
        "timeout_s": None if timeout is None else float(timeout),
        "shape": get("shape", ""),
        "status": JobStatus.CLAIMED,
        "attempts": attempt,
        "worker_id": worker_id,
        "progress": None,
        "result": None,
        "error": None,
        "errors": [],
        "created_at": None,
        "claimed_at": None,
        "finished_at": None,
        "next_attempt_at": None,
        "cancel_requested": False,
        "unworkable": False,
        "held_by": None,
        "after": after,
        "on_parent_failure": failure,
        "waiting_on": [],
    }
    if len(values) != len(_JOB_FIELDS):  # a field added to Job and not here: validate
        return None
    return _built(Job, values, (raw.keys() & _JOB_FIELDS) | _CLAIM_SET)  # type: ignore[no-any-return]


def claimed_job(body: str | bytes, *, attempt: int, worker_id: str) -> Job:
    """The claimed job of a stored body: status claimed, `attempts` = this attempt, leased to `worker_id`."""
    job = _fast(from_json(body), attempt, worker_id)
    if job is None:
        job = Job.model_validate_json(body)
        job.status, job.attempts, job.worker_id = JobStatus.CLAIMED, attempt, worker_id
    return job


def claimed(job: Job, token: str, attempt: int, lease_deadline_ms: int) -> ClaimedJob:
    """The ClaimedJob of `job` (all four fields given, each of its type: nothing to validate)."""
    values = {"job": job, "token": token, "attempt": attempt, "lease_deadline_ms": lease_deadline_ms}
    return _built(ClaimedJob, values, {"job", "token", "attempt", "lease_deadline_ms"})  # type: ignore[no-any-return]
