"""A claimed job's stored body, or a job just submitted, as a `Job`, without validating it a second time.

    job = claimed_job(body, attempt=2, worker_id="m-echo0")
    claim = claim_of(body, token="t.1", attempt=2, lease_deadline_ms=deadline, worker_id="m-echo0")
    job = submitted_job(spec, job_id, shape, created_at, next_attempt_at)

The body is what the producer wrote: the fields of a `JobSpec` validated at submit that differ from their
defaults, plus `id` and `shape`, or the whole dump versions up to 8011a77 wrote (bodyform.py). Validating it
again on every claim (`Job.model_validate_json`, with the `Requirements` validators and three attribute writes
after it) cost a busy worker about a tenth of its Python per job. A body in one of the producer's forms (its
keys among those it writes; each value of the type it writes there, enum values among the enum's; the
requirements' lists as parsed) becomes the Job's own field dict, with the same values, types and
`model_fields_set` that validation gives; anything else (a newer body, a hand-written one) goes through
`Job.model_validate_json` as before. The `Job` a submit returns is made the same way from the spec validated at
submit: building it with `Job(...)` validated every field again, about a fifth of the client's Python per
`Queue.submit`. The worker runtime does not build the Job at all unless something asks for it: its `Claim` holds
the eight values a run reads (`claim_of`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json

from appliance.queue.bodyform import body_form, body_values, fields_set, parents_of
from appliance.queue.models import ClaimedJob, Job, JobSpec, JobStatus, Requirements

_new = object.__new__
_set = object.__setattr__

#: What validation marks set beyond the body's own fields: the three the claim assigns after it.
_CLAIM_SET = frozenset({"status", "attempts", "worker_id"})
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


def _built(cls: type[Any], values: dict[str, Any], fields_set: set[str]) -> Any:
    """An instance of the pydantic model `cls` holding `values` (every field), as validation leaves it."""
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", fields_set)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _form(raw: Any) -> bool:
    """Whether a parsed body is in the producer's form (bodyform.py: the compact one, or the whole dump that
    versions up to 8011a77 wrote): anything else is validated instead."""
    return _SAME_AS_VALIDATION and body_form(raw)


def _fast(raw: Any, attempt: int, worker_id: str) -> Job | None:
    """The Job of a body in the producer's form (its dict, read in place), or None."""
    if not _form(raw):
        return None
    after, failure = parents_of(raw)
    values = body_values(raw)
    values |= {
        "status": JobStatus.CLAIMED,
        "attempts": attempt,
        "worker_id": worker_id,
        **_UNSET,
        "errors": [],
        **_UNSET_AFTER_ERRORS,
        "after": after,
        "on_parent_failure": failure,
        "waiting_on": [],
    }
    return _built(Job, values, fields_set(raw) | _CLAIM_SET)  # type: ignore[no-any-return]


#: Bodies of every form `_fast` reads (the whole dump 8011a77 wrote, with and without parents; the compact
#: form, plain and with every kind of field), checked against validation once per process.
_OLD_PLAIN = JobSpec(service="s").model_dump_json(exclude={"id", "after", "on_parent_failure"})
_OLD_AFTER = JobSpec(service="s", after=["p"], timeout_s=1).model_dump_json(exclude={"id"})
_CHECKED_BODIES = (
    f'{_OLD_PLAIN[:-1]},"id":"j","shape":"h"}}',
    f'{_OLD_AFTER[:-1]},"id":"j","shape":"h"}}',
    '{"service":"s","id":"j","shape":"h"}',
    '{"service":"s","payload":{"a":null},"priority":2,"requirements":{"gpu_memory_gb":8,"models":["m"],'
    '"isolation":"loose"},"customer_id":"c","max_retries":0,"timeout_s":2,"after":["p"],'
    '"on_parent_failure":"ignore","id":"j","shape":"h"}',
)


def _same_as_validation() -> bool:
    """Whether this module builds what validation builds, on a body of each form: a field added to Job or
    Requirements and not here turns the shortcut off instead of leaving the field out."""
    for body in _CHECKED_BODIES:
        expected = Job.model_validate_json(body)
        expected.status, expected.attempts, expected.worker_id = JobStatus.CLAIMED, 1, "w"
        built = _fast(from_json(body), 1, "w")
        if (
            built is None
            or list(built.__dict__) != list(expected.__dict__)
            or list(built.requirements.__dict__) != list(expected.requirements.__dict__)
            or built.model_fields_set != expected.model_fields_set
            or built.requirements.model_fields_set != expected.requirements.model_fields_set
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


class Claim:
    """A job leased to this worker as its runtime reads it: the fields a run needs, read from the stored body,
    with the full `Job` and `ClaimedJob` built only when something asks for them (`job`, `claimed`).

    Building them for every claim was about a sixth of a busy worker's Python per job (from the body's parsed
    dict: its `Requirements`, a `Job` of 28 fields, the `ClaimedJob`), while a run reads eight values. A body
    in the producer's form (`_form`, checked at claim) is read directly, and its `Job` is built later from the
    same text exactly as `claimed_job` builds it at claim; any other body is validated at claim, as before (an
    invalid one fails the claim with validation's error), and read from the validated Job. `payload` is the
    run's own dict: the connector may change it; the `Job` keeps its own.
    """

    __slots__ = (
        "id",
        "service",
        "payload",
        "timeout_s",
        "customer_id",
        "after",
        "shape",
        "token",
        "attempt",
        "lease_deadline_ms",
        "_body",
        "_worker_id",
        "_claimed",
    )

    id: str
    service: str
    payload: dict[str, Any]
    #: The job's own time limit (s), or None.
    timeout_s: float | None
    customer_id: str | None
    #: The jobs it waited for (their results reach the run: `Job.after`).
    after: list[str]
    shape: str
    #: The attempt's fencing token.
    token: str
    attempt: int
    lease_deadline_ms: int
    #: The stored body (parsed again for the Job), whom it is leased to, the ClaimedJob once built.
    _body: str | bytes
    _worker_id: str
    _claimed: ClaimedJob | None

    @property
    def claimed(self) -> ClaimedJob:
        """The `ClaimedJob`, as `Queue.claim` returns it (built on first use, then kept)."""
        if self._claimed is None:
            job = claimed_job(self._body, attempt=self.attempt, worker_id=self._worker_id)
            self._claimed = claimed(job, self.token, self.attempt, self.lease_deadline_ms)
        return self._claimed

    @property
    def job(self) -> Job:
        """The claimed `Job` (status claimed, this attempt, this worker): `claimed.job`."""
        return self.claimed.job

    @classmethod
    def of(cls, got: ClaimedJob) -> Claim:
        """The Claim of an already built ClaimedJob (its payload copied: the run's own dict)."""
        job = got.job
        claim = _new(cls)
        claim.id, claim.service, claim.payload = job.id, job.service, dict(job.payload)
        claim.timeout_s, claim.customer_id, claim.after, claim.shape = (
            job.timeout_s,
            job.customer_id,
            job.after,
            job.shape,
        )
        claim.token, claim.attempt, claim.lease_deadline_ms = got.token, got.attempt, got.lease_deadline_ms
        claim._body, claim._worker_id, claim._claimed = "", job.worker_id or "", got
        return claim

    def __repr__(self) -> str:
        return f"Claim(id={self.id!r}, attempt={self.attempt}, token={self.token!r})"


def claim_of(body: str | bytes, *, token: str, attempt: int, lease_deadline_ms: int, worker_id: str) -> Claim:
    """The Claim of a stored body leased to `worker_id` with `token`: the fields read directly from a body in
    the producer's form; any other body validated now (`claimed_job`: its error raised here)."""
    try:
        raw = from_json(body, cache_strings="keys")  # values not cached: ids and tokens are new every time
    except ValueError:
        raw = None  # not JSON: validation refuses it with its usual error
    if not _form(raw):
        job = claimed_job(body, attempt=attempt, worker_id=worker_id)
        return Claim.of(claimed(job, token, attempt, lease_deadline_ms))
    get = raw.get
    timeout = get("timeout_s")
    claim = _new(Claim)
    claim.id, claim.service, claim.payload, claim.shape = (
        raw["id"],
        raw["service"],
        get("payload") or {},
        raw["shape"],
    )
    claim.timeout_s = None if timeout is None else float(timeout)
    claim.customer_id, claim.after = get("customer_id"), get("after") or []
    claim.token, claim.attempt, claim.lease_deadline_ms = token, attempt, lease_deadline_ms
    claim._body, claim._worker_id, claim._claimed = body, worker_id, None
    return claim


def claims_of(worker_id: str, token: str, reply: list[Any]) -> list[Claim]:
    """The jobs of claim.lua's 'ok' answer (deadline, then id, body, attempt per job), each with its own token
    (`token.1`, `token.2`, ...). The bodies were validated at submit: read, not validated again."""
    deadline = int(reply[2])
    return [
        claim_of(
            reply[at + 1],
            token=f"{token}.{index}",
            attempt=int(reply[at + 2]),
            lease_deadline_ms=deadline,
            worker_id=worker_id,
        )
        for index, at in enumerate(range(4, len(reply), 3), start=1)
    ]
