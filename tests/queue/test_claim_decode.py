"""A claimed job is built from its stored body without validating it again (issue 14: the worker's Python per job),
and comes out exactly as validation would make it: the same values, types and fields set."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.queue import ClaimedJob, JobStatus, Queue
from appliance.queue import jobbody as jobbody_module
from appliance.queue.jobbody import claimed_job
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


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every body `Job.model_validate_json` is given from now on (it still validates them)."""
    seen: list[str] = []
    real = Job.model_validate_json

    def counting(data: Any, **kwargs: Any) -> Job:
        seen.append(data)
        return real(data, **kwargs)

    monkeypatch.setattr(Job, "model_validate_json", counting)
    return seen


async def test_claiming_does_not_validate_the_stored_body_again(queue: Queue, validations: list[str]) -> None:
    # Before: every claimed job went through Job.model_validate_json (the Requirements validators included).
    submitted = await queue.submit(SPECS[2])
    claimed = await queue.claim("m-w1", [submitted.shape])
    assert claimed is not None and claimed.job.requirements.models == ["a", "b"]
    assert validations == []


def dumped(**changes: Any) -> dict[str, Any]:
    """A body as the producer writes it (the spec's dump, then id and shape), with `changes` made to it."""
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
        {k: v for k, v in dumped().items() if k != "payload"},  # a key missing
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
