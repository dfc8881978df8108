"""A claimed job is built from its stored body without validating it again (issue 14: the worker's Python per job),
and comes out exactly as validation would make it: the same values, types and fields set."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.queue import ClaimedJob, JobStatus, Queue
from appliance.queue import jobbody as jobbody_module
from appliance.queue.jobbody import Claim, claim_of, claimed_job
from appliance.queue.models import Job, JobSpec

SPECS: list[dict[str, Any]] = [
    {"service": "echo"},
    {
        "service": "echo",
        "payload": {"nested": {"list": [1, 2.5, None, "x"], "flag": True}},
        "priority": 7,
        "customer_id": "acme",
        "workflow_id": "wf-1",
        "pool": "batch",
        "max_retries": 0,
        "timeout_s": 60,  # an int: the job holds a float
    },
    {
        "service": "echo",
        "requirements": {
            "gpu_memory_gb": 10,
            "ram_gb": 8.5,
            "cpu_cores": 4,
            "gpu_count": 2,
            "machine_type": "gpu",
            "models": ["b", "a"],
            "isolation": "loose",
            "region": "eu",
            "tags": ["fast"],
            "not_tags": ["old"],
            "workflow": "flow",
        },
        "customer_id": "acme",
        "timeout_s": 2.5,
    },
    {"service": "echo", "requirements": {"pool": "gpu", "isolation": "strict"}, "customer_id": "c1"},
]


def described(job: Job) -> Any:
    """Everything validation decides about a job: values with their types, fields set, nested model state."""

    def typed(model: Any) -> dict[str, Any]:
        return {
            name: (value, type(value)) for name, value in model.__dict__.items() if name != "requirements"
        }

    return (
        typed(job),
        job.model_fields_set,
        typed(job.requirements),
        job.requirements.model_fields_set,
        job.__pydantic_extra__,
        job.__pydantic_private__,
        job.model_dump_json(),
    )


async def claim_recording_bodies(queue: Queue, shape: str, bodies: list[str]) -> ClaimedJob:
    real = jobbody_module.claimed_job

    def recording(body: str, **kwargs: Any) -> Job:
        bodies.append(body)
        return real(body, **kwargs)

    jobbody_module.claimed_job = recording  # type: ignore[assignment]
    try:
        got = await queue.claim("m-w1", [shape])
    finally:
        jobbody_module.claimed_job = real
    assert got is not None
    return got


async def test_a_claimed_job_is_what_validating_its_body_gives(queue: Queue) -> None:
    parent = await queue.submit({"service": "echo", "id": "parent"})
    got = await queue.claim("m-w1", [parent.shape])
    assert got is not None
    await queue.complete(got.job.id, got.token, {})
    child = await queue.submit({"service": "echo", "after": ["parent"], "on_parent_failure": "ignore"})
    jobs = [child] + [await queue.submit(spec) for spec in SPECS]
    for submitted in jobs:
        bodies: list[str] = []
        claimed = await claim_recording_bodies(queue, submitted.shape, bodies)
        assert claimed.job.id == submitted.id and len(bodies) == 1
        expected = Job.model_validate_json(bodies[0])
        expected.status, expected.attempts, expected.worker_id = JobStatus.CLAIMED, claimed.attempt, "m-w1"
        assert claimed.job == expected
        assert described(claimed.job) == described(expected)
        assert claimed.attempt == 1 and type(claimed.lease_deadline_ms) is int
        assert claimed.token.endswith(".1") and type(claimed.token) is str
    assert claimed.job.after == [] and child.after == ["parent"]


async def test_claiming_does_not_validate_the_stored_body_again(queue: Queue, validations: list[str]) -> None:
    # Before: every claimed job went through Job.model_validate_json (the Requirements validators included).
    submitted = await queue.submit(SPECS[2])
    claimed = await queue.claim("m-w1", [submitted.shape])
    assert claimed is not None and claimed.job.requirements.models == ["a", "b"]
    assert validations == []


def dumped(**changes: Any) -> dict[str, Any]:
    """A body as the producer wrote it up to 8011a77 (the spec's whole dump, then id and shape), with `changes`
    made to it."""
    body = json.loads(JobSpec(service="echo").model_dump_json(exclude={"id", "after", "on_parent_failure"}))
    body |= {"id": "j1", "shape": "s"}
    for key, value in changes.items():
        if key.startswith("req_"):
            body["requirements"][key[4:]] = value
        else:
            body[key] = value
    return body


def test_the_producers_form_is_built_without_validation() -> None:
    assert jobbody_module._fast(dumped(), 1, "w") is not None
    assert jobbody_module._fast(dumped(timeout_s=5, req_gpu_memory_gb=8), 1, "w") is not None


@pytest.mark.parametrize(
    "body",
    [
        dumped(created_at="2026-01-01T00:00:00Z"),  # a key it does not write
        dumped(priority="3"),  # a type the dump never writes
        dumped(req_cpu_cores=2.0),
        dumped(req_isolation="unknown"),
        {k: v for k, v in dumped().items() if k != "shape"},  # a key every body holds missing
        "not json",
    ],
)
def test_a_body_in_another_form_is_validated_as_before(
    body: dict[str, Any] | str, validations: list[str]
) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    try:
        job = claimed_job(text, attempt=3, worker_id="w")
    except ValueError:
        job = None  # validation refused it, as it always did
    assert validations == [text]
    if job is not None:
        assert (job.status, job.attempts, job.worker_id) == (JobStatus.CLAIMED, 3, "w")


@pytest.mark.parametrize(
    "body",
    [
        dumped(service=5),  # a value of a type validation refuses
        dumped(customer_id=["acme"]),
        dumped(id=None),
        dumped(req_isolation=["none"]),  # not even hashable
    ],
)
def test_a_body_whose_values_validation_refuses_fails_with_validations_error(
    body: dict[str, Any], validations: list[str]
) -> None:
    # Before: a body of the producer's keys was taken as it was whatever its strings held (a job whose service
    # is 5), and an unhashable isolation raised a TypeError out of the shortcut. Now each is validated, and
    # validation refuses it with its error naming the field.
    text = json.dumps(body)
    with pytest.raises(ValueError, match="validation error for Job"):
        claimed_job(text, attempt=1, worker_id="w")
    assert validations == [text]


def test_a_body_with_parents_of_another_type_is_validated() -> None:
    body = dumped(after=[1, 2], on_parent_failure="fail")
    with pytest.raises(ValueError, match="after"):
        claimed_job(json.dumps(body), attempt=1, worker_id="w")
    body = dumped(after=["p"], on_parent_failure=["fail"])
    with pytest.raises(ValueError, match="on_parent_failure"):
        claimed_job(json.dumps(body), attempt=1, worker_id="w")


async def leased(queue: Queue, spec: dict[str, Any]) -> Claim:
    """One job of `spec` submitted and leased as the worker runtime leases it (`finish_and_lease`)."""
    submitted = await queue.submit(spec)
    _, claims, _ = await queue.leases.finish_and_lease([], "m-w1", [submitted.shape], 1)
    assert [claim.id for claim in claims] == [submitted.id]
    return claims[0]


async def test_the_worker_runtime_reads_a_claimed_job_without_building_it(
    queue: Queue, monkeypatch: pytest.MonkeyPatch, validations: list[str]
) -> None:
    # Before: every claim built the whole Job (its Requirements, 28 fields) and the ClaimedJob, though a run
    # reads eight values. Now the worker's Claim holds those, and the Job is built when something asks for it,
    # exactly as validating the body would make it.
    built: list[str] = []
    real = jobbody_module._fast

    def counting(raw: Any, attempt: int, worker_id: str) -> Any:
        built.append(raw["id"])
        return real(raw, attempt, worker_id)

    monkeypatch.setattr(jobbody_module, "_fast", counting)
    for spec in SPECS:
        claim = await leased(queue, spec)
        assert built == []
        job = claim.job
        assert built == [claim.id] and claim.job is job and claim.claimed.job is job  # built once, then kept
        built.clear()
        assert validations == []  # in the producer's form: built, not validated
        expected = Job.model_validate_json(claim._body)
        validations.clear()
        expected.status, expected.attempts, expected.worker_id = JobStatus.CLAIMED, 1, "m-w1"
        assert described(job) == described(expected)
        read = (
            claim.id,
            claim.service,
            claim.payload,
            claim.timeout_s,
            claim.customer_id,
            claim.after,
            claim.shape,
        )
        assert read == (
            job.id,
            job.service,
            job.payload,
            job.timeout_s,
            job.customer_id,
            job.after,
            job.shape,
        )
        assert type(claim.timeout_s) is type(job.timeout_s)
        assert (claim.token, claim.attempt, claim.lease_deadline_ms) == (
            claim.claimed.token,
            claim.claimed.attempt,
            claim.claimed.lease_deadline_ms,
        )


async def test_a_claims_payload_is_the_runs_own(queue: Queue) -> None:
    # The connector gets the Claim's payload without a copy: whatever it does to it, the Job keeps the body's.
    claim = await leased(queue, {"service": "echo", "payload": {"a": 1}})
    claim.payload["a"] = 2
    assert claim.job.payload == {"a": 1}
    built = Claim.of(claim.claimed)
    built.payload["a"] = 3
    assert claim.job.payload == {"a": 1} and built.job is claim.job


async def test_a_claim_of_a_body_in_another_form_is_validated_at_claim(
    queue: Queue, validations: list[str]
) -> None:
    # An older or hand-written body (a key the producer does not write) is validated when it is claimed, and
    # the run reads the validated Job's values; one validation refuses fails the claim with its error.
    older = json.dumps(dumped(created_at="2026-01-01T00:00:00Z", timeout_s=3))
    claim = claim_of(older, token="t.1", attempt=2, lease_deadline_ms=5, worker_id="w")
    assert validations == [older]
    assert (claim.id, claim.timeout_s, claim.attempt, claim.token) == ("j1", 3.0, 2, "t.1")
    assert claim.job.created_at is not None and claim.job.attempts == 2 and claim.job.worker_id == "w"
    with pytest.raises(ValueError, match="validation error for Job"):
        claim_of(json.dumps(dumped(service=5)), token="t.1", attempt=1, lease_deadline_ms=5, worker_id="w")
