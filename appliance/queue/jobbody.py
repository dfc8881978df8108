"""A claimed job's stored body, or a job just submitted, as a `Job`, without validating it a second time.

    job = claimed_job(body, attempt=2, worker_id="m-echo0")
    job = submitted_job(spec, job_id, shape, created_at, next_attempt_at)

The body is what the producer wrote: a `JobSpec` validated at submit, dumped by pydantic, plus `id` and `shape`.
Validating it again on every claim (`Job.model_validate_json`, with the `Requirements` validators and three
attribute writes after it) cost a busy worker about a tenth of its Python per job. A body of exactly the dump's
form (its keys, numbers and enum values as the dump writes them; strings and lists as parsed) becomes the Job's
own field dict, with the same values, types and `model_fields_set` that validation gives; anything else (an
older or newer body, a hand-written one) goes through `Job.model_validate_json` as before. The `Job` a submit
returns is made the same way from the spec validated at submit: building it with `Job(...)` validated every
field again, about a fifth of the client's Python per `Queue.submit`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json

from appliance.queue.models import ClaimedJob, Isolation, Job, JobSpec, JobStatus, ParentFailure, Requirements

_new = object.__new__
_set = object.__setattr__

#: The two forms the producer writes: every field of the spec but its id (pydantic's dump writes them all), then
#: `id` and `shape`; `after` and `on_parent_failure` only for a job with parents.
_PLAIN_BODY = frozenset(JobSpec.model_fields) - {"id", "after", "on_parent_failure"} | {"id", "shape"}
_AFTER_BODY = _PLAIN_BODY | {"after", "on_parent_failure"}
_REQUIREMENT_KEYS = frozenset(Requirements.model_fields)
_JOB_FIELDS = frozenset(Job.model_fields)
#: What validation marks set: the body's Job fields, and the three the claim assigns after it.
_CLAIM_SET = frozenset({"status", "attempts", "worker_id"})
_PLAIN_SET = (_PLAIN_BODY & _JOB_FIELDS) | _CLAIM_SET
_AFTER_SET = (_AFTER_BODY & _JOB_FIELDS) | _CLAIM_SET
#: The fields no body holds, at their defaults, in their order around `errors` (a list: made per job).
_UNSET = {
    "progress": None,
    "result": None,
    "error": None,
}
_UNSET_AFTER_ERRORS = {
    "created_at": None,
    "claimed_at": None,
    "finished_at": None,
    "next_attempt_at": None,
    "cancel_requested": False,
    "unworkable": False,
    "held_by": None,
}
_ISOLATIONS = {i.value: i for i in Isolation}
_PARENT_FAILURES = {p.value: p for p in ParentFailure}
_FLOAT = (float, int)


def _built(cls: type[Any], values: dict[str, Any], fields_set: set[str]) -> Any:
    """An instance of the pydantic model `cls` holding `values` (every field), as validation leaves it."""
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", fields_set)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _requirements(raw: Any) -> Requirements | None:
    """The body's requirements (their dict, converted in place), or None when not in the dump's form."""
    if type(raw) is not dict or raw.keys() != _REQUIREMENT_KEYS:
        return None
    isolation = _ISOLATIONS.get(raw["isolation"])
    gpu, ram, cores, count = raw["gpu_memory_gb"], raw["ram_gb"], raw["cpu_cores"], raw["gpu_count"]
    if (
        isolation is None
        or not (gpu is None or type(gpu) in _FLOAT)
        or not (ram is None or type(ram) in _FLOAT)
        or not (cores is None or type(cores) is int)
        or not (count is None or type(count) is int)
    ):
        return None
    raw["isolation"] = isolation
    if gpu is not None:
        raw["gpu_memory_gb"] = float(gpu)
    if ram is not None:
        raw["ram_gb"] = float(ram)
    return _built(Requirements, raw, set(_REQUIREMENT_KEYS))  # type: ignore[no-any-return]


def _fast(raw: Any, attempt: int, worker_id: str) -> Job | None:
    """The Job of a body in the producer's form (its dict, converted in place), or None."""
    if type(raw) is not dict or not _SAME_AS_VALIDATION:
        return None
    keys = raw.keys()
    if keys == _PLAIN_BODY:
        fields_set, failure = _PLAIN_SET, ParentFailure.FAIL
        raw["after"] = []
    elif keys == _AFTER_BODY:
        fields_set, failure = _AFTER_SET, _PARENT_FAILURES.get(raw["on_parent_failure"])  # type: ignore[assignment]
    else:
        return None
    requirements = _requirements(raw["requirements"])
    timeout = raw["timeout_s"]
    if (
        requirements is None
        or failure is None
        or type(raw["priority"]) is not int
        or type(raw["max_retries"]) is not int
        or type(raw["payload"]) is not dict
        or not (timeout is None or type(timeout) in _FLOAT)
    ):
        return None
    # In the fields' order, as validation fills __dict__ (a dump follows it).
    values = {
        "id": raw["id"],
        "service": raw["service"],
        "payload": raw["payload"],
        "priority": raw["priority"],
        "requirements": requirements,
        "customer_id": raw["customer_id"],
        "workflow_id": raw["workflow_id"],
        "pool": raw["pool"],
        "max_retries": raw["max_retries"],
        "timeout_s": None if timeout is None else float(timeout),
        "shape": raw["shape"],
        "status": JobStatus.CLAIMED,
        "attempts": attempt,
        "worker_id": worker_id,
        **_UNSET,
        "errors": [],
        **_UNSET_AFTER_ERRORS,
        "after": raw["after"],
        "on_parent_failure": failure,
        "waiting_on": [],
    }
    return _built(Job, values, set(fields_set))  # type: ignore[no-any-return]


def _same_as_validation() -> bool:
    """Whether this module builds what validation builds, checked once on a dumped spec of each form: a field
    added to Job or Requirements and not here turns the shortcut off instead of leaving the field out."""
    for spec in (JobSpec(service="s"), JobSpec(service="s", after=["p"], timeout_s=1)):
        body = spec.model_dump_json(exclude={"id"} if spec.after else {"id", "after", "on_parent_failure"})
        body = f'{body[:-1]},"id":"j","shape":"h"}}'
        expected = Job.model_validate_json(body)
        expected.status, expected.attempts, expected.worker_id = JobStatus.CLAIMED, 1, "w"
        built = _fast(from_json(body), 1, "w")
        if (
            built is None
            or list(built.__dict__) != list(expected.__dict__)
            or list(built.requirements.__dict__) != list(expected.requirements.__dict__)
            or built.model_fields_set != expected.model_fields_set
            or built.model_dump_json() != expected.model_dump_json()
        ):
            return False
    return True


_SAME_AS_VALIDATION = True
_SAME_AS_VALIDATION = _same_as_validation()


def claimed_job(body: str | bytes, *, attempt: int, worker_id: str) -> Job:
    """The claimed job of a stored body: status claimed, `attempts` = this attempt, leased to `worker_id`."""
    try:
        raw = from_json(body)
    except ValueError:
        raw = None  # not JSON: validation below refuses it with its usual error
    job = _fast(raw, attempt, worker_id)
    if job is None:
        job = Job.model_validate_json(body)
        job.status, job.attempts, job.worker_id = JobStatus.CLAIMED, attempt, worker_id
    return job


#: The fields `Job(...)` of a submitted job is given (so marks set): the spec's, then the producer's.
_FROM_SPEC = tuple(name for name in JobSpec.model_fields if name not in ("id", "run_at", "delay_s"))
_SUBMITTED_SET = frozenset({*_FROM_SPEC, "id", "shape", "status", "created_at", "next_attempt_at"})


def _submitted(
    spec: JobSpec, job_id: str, shape: str, created_at: datetime | None, next_attempt_at: datetime | None
) -> Job:
    """What validation makes of the spec's fields and the producer's (the payload dict and the `after` list
    copied, as validation copies them; the requirements model taken as it is, as validation takes it)."""
    values = {
        "id": job_id,
        "service": spec.service,
        "payload": dict(spec.payload),
        "priority": spec.priority,
        "requirements": spec.requirements,
        "customer_id": spec.customer_id,
        "workflow_id": spec.workflow_id,
        "pool": spec.pool,
        "max_retries": spec.max_retries,
        "timeout_s": spec.timeout_s,
        "shape": shape,
        "status": JobStatus.PENDING,
        "attempts": 0,
        "worker_id": None,
        **_UNSET,
        "errors": [],
        "created_at": created_at,
        "claimed_at": None,
        "finished_at": None,
        "next_attempt_at": next_attempt_at,
        "cancel_requested": False,
        "unworkable": False,
        "held_by": None,
        "after": list(spec.after),
        "on_parent_failure": spec.on_parent_failure,
        "waiting_on": [],
    }
    return _built(Job, values, set(_SUBMITTED_SET))  # type: ignore[no-any-return]


def _validated_submitted(
    spec: JobSpec, job_id: str, shape: str, created_at: datetime | None, next_attempt_at: datetime | None
) -> Job:
    fields = {name: getattr(spec, name) for name in _FROM_SPEC}
    return Job(
        **fields,
        id=job_id,
        shape=shape,
        status=JobStatus.PENDING,
        created_at=created_at,
        next_attempt_at=next_attempt_at,
    )


def _submitted_as_validation() -> bool:
    """Whether `_submitted` builds what `Job(...)` builds, checked once on specs of both forms: a field added to
    Job and not here turns the shortcut off instead of leaving the field out."""
    now = datetime.now(UTC)
    for spec in (
        JobSpec(service="s"),
        JobSpec(
            service="s",
            payload={"a": [1]},
            priority=2,
            after=["p"],
            timeout_s=1,
            customer_id="c",
            requirements=Requirements(tags=["t"]),
        ),
    ):
        expected = _validated_submitted(spec, "j", "h", now, None)
        built = _submitted(spec, "j", "h", now, None)
        if (
            list(built.__dict__) != list(expected.__dict__)
            or built.model_fields_set != expected.model_fields_set
            or built.model_dump_json() != expected.model_dump_json()
        ):
            return False
    return True


_SUBMITTED_AS_VALIDATION = _submitted_as_validation()


def submitted_job(
    spec: JobSpec, job_id: str, shape: str, created_at: datetime | None, next_attempt_at: datetime | None
) -> Job:
    """The pending Job of a validated spec the producer submits as `job_id` of `shape`."""
    if _SUBMITTED_AS_VALIDATION:
        return _submitted(spec, job_id, shape, created_at, next_attempt_at)
    return _validated_submitted(spec, job_id, shape, created_at, next_attempt_at)


def claimed(job: Job, token: str, attempt: int, lease_deadline_ms: int) -> ClaimedJob:
    """The ClaimedJob of `job` (all four fields given, each of its type: nothing to validate)."""
    values = {"job": job, "token": token, "attempt": attempt, "lease_deadline_ms": lease_deadline_ms}
    return _built(ClaimedJob, values, {"job", "token", "attempt", "lease_deadline_ms"})  # type: ignore[no-any-return]
