"""The job body Redis stores (issue 14: every byte of it is hashed by Redis's Lua at submit and at each claim, and
kept in memory while the job waits): only the spec's fields that differ from their defaults, then id and shape.
What a user sees (`Queue.get`, the claimed Job, the worker's Claim) is the same as when the whole dump was stored,
and a body the previous version (8011a77) wrote is still claimed directly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from appliance.queue import JobSpec, JobStatus, Queue
from appliance.queue import jobbody as jobbody_module
from appliance.queue.bodyform import stored_body
from appliance.queue.jobbody import claimed_job
from appliance.queue.models import Job
from tests.queue.test_claim_decode import described, leased

#: The spec fields a Job repeats (what a user reads back of a submission).
SPEC_FIELDS = (
    "service",
    "payload",
    "priority",
    "requirements",
    "customer_id",
    "workflow_id",
    "pool",
    "max_retries",
    "timeout_s",
    "after",
    "on_parent_failure",
)


async def body_of(queue: Queue, job_id: str) -> dict[str, Any]:
    raw = await queue.client.hget(queue.keys.spec, job_id)
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


async def test_a_plain_jobs_stored_body_holds_its_service_id_and_shape_only(queue: Queue) -> None:
    # Before: the whole dump, ~400 bytes ("payload":{},"priority":0,"requirements":{...12 defaults...},...).
    job = await queue.submit({"service": "echo"})
    raw = await queue.client.hget(queue.keys.spec, job.id)
    assert raw == json.dumps({"service": "echo", "id": job.id, "shape": job.shape}, separators=(",", ":"))
    assert len(raw) <= 100


#: Submissions with fields away from their defaults (one of them each kind), and what their bodies hold beyond
#: id and shape.
NON_DEFAULT: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {
            "service": "echo",
            "payload": {"none": None, "empty": {}, "list": [], "zero": 0, "false": False, "s": ""},
        },
        {"payload": {"none": None, "empty": {}, "list": [], "zero": 0, "false": False, "s": ""}},
    ),
    (
        {
            "service": "echo",
            "priority": -3,
            "max_retries": 0,
            "timeout_s": 90,
            "workflow_id": "wf",
            "pool": "p",
        },
        {"priority": -3, "max_retries": 0, "timeout_s": 90.0, "workflow_id": "wf", "pool": "p"},
    ),
    (
        {
            "service": "echo",
            "customer_id": "acme",
            "requirements": {
                "gpu_memory_gb": 0,
                "models": ["b", "a", "b"],
                "isolation": "loose",
                "tags": ["t"],
            },
        },
        {
            "customer_id": "acme",
            "requirements": {"gpu_memory_gb": 0.0, "models": ["a", "b"], "isolation": "loose", "tags": ["t"]},
        },
    ),
    (
        {
            "service": "echo",
            "requirements": {"cpu_cores": 2, "gpu_count": 1, "machine_type": "gpu", "ram_gb": 1.5},
        },
        {"requirements": {"cpu_cores": 2, "gpu_count": 1, "machine_type": "gpu", "ram_gb": 1.5}},
    ),
]


@pytest.mark.parametrize(("spec", "stored"), NON_DEFAULT)
async def test_fields_away_from_their_defaults_are_stored_and_read_back_as_submitted(
    queue: Queue, spec: dict[str, Any], stored: dict[str, Any], validations: list[str]
) -> None:
    claim = await leased(queue, spec)  # submitted, then leased as the worker runtime leases it
    assert validations == []  # read directly, not validated
    assert await body_of(queue, claim.id) == {
        "service": "echo",
        **stored,
        "id": claim.id,
        "shape": claim.shape,
    }
    expected = JobSpec.model_validate(spec).model_dump(include=set(SPEC_FIELDS))
    assert (await queue.get(claim.id)).model_dump(include=set(SPEC_FIELDS)) == expected  # type: ignore[union-attr]
    assert claim.job.model_dump(include=set(SPEC_FIELDS)) == expected
    assert (claim.payload, claim.timeout_s, claim.customer_id) == (
        expected["payload"],
        expected["timeout_s"],
        expected["customer_id"],
    )
    checked = Job.model_validate_json(claim._body)
    checked.status, checked.attempts, checked.worker_id = JobStatus.CLAIMED, 1, "m-w1"
    assert described(claim.job) == described(checked)


async def test_a_job_with_parents_stores_them_and_a_policy_other_than_fail(queue: Queue) -> None:
    parent = await queue.submit({"service": "echo", "id": "parent"})
    child = await queue.submit({"service": "echo", "after": ["parent"], "on_parent_failure": "ignore"})
    failing = await queue.submit({"service": "echo", "after": ["parent"], "on_parent_failure": "fail"})
    assert (await body_of(queue, child.id))["after"] == ["parent"]
    assert (await body_of(queue, child.id))["on_parent_failure"] == "ignore"
    assert "on_parent_failure" not in await body_of(queue, failing.id)
    assert await body_of(queue, parent.id) == {"service": "echo", "id": "parent", "shape": parent.shape}
    for job in (child, failing):
        got = await queue.get(job.id)
        assert got is not None and (got.after, got.on_parent_failure) == (job.after, job.on_parent_failure)


async def test_a_value_given_equal_to_its_default_is_stored_as_not_given(queue: Queue) -> None:
    # The body cannot tell "priority 0 given" from "not given" and nothing reads the difference: both are stored
    # (and read back) the same, as the plain job.
    plain = await queue.submit({"service": "echo"})
    explicit = await queue.submit(
        {
            "service": "echo",
            "payload": {},
            "priority": 0,
            "max_retries": 3,
            "customer_id": None,
            "requirements": {"isolation": "none", "tags": [], "gpu_memory_gb": None},
            "after": [],
            "on_parent_failure": "fail",
        }
    )
    assert explicit.shape == plain.shape
    assert await body_of(queue, explicit.id) == {"service": "echo", "id": explicit.id, "shape": plain.shape}
    got, plain_got = await queue.get(explicit.id), await queue.get(plain.id)
    assert got is not None and plain_got is not None
    assert got.model_dump(exclude={"id", "created_at"}) == plain_got.model_dump(exclude={"id", "created_at"})


class Settings(BaseModel):
    steps: int = 20
    seed: int | None = None


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "not-the-job", "shape": "x", "service": "evil", "requirements": {"isolation": "strict"}},
        {"quote": 'a"b\\c', "newline": "x\ny", "unicode": "żółć ✓ \U0001f600", "nul": "\x00"},
        {"deep": json.loads("[" * 99 + "]" * 99)},
        {"model": Settings()},  # a model inside the payload keeps its defaults: only the spec's are left out
        {"big": "x" * 100_000},
    ],
)
async def test_hostile_payloads_are_stored_whole_and_read_back(queue: Queue, payload: dict[str, Any]) -> None:
    expected = json.loads(JobSpec(service="echo", payload=payload).model_dump_json())["payload"]
    claim = await leased(queue, {"service": "echo", "payload": payload})
    body = await body_of(queue, claim.id)
    assert body == {"service": "echo", "payload": expected, "id": claim.id, "shape": claim.shape}
    got = await queue.get(claim.id)
    assert got is not None and got.payload == expected and got.service == "echo" and got.id == claim.id
    assert claim.payload == expected and claim.job.payload == expected and claim.service == "echo"


async def test_a_start_time_given_is_stored(queue: Queue) -> None:
    # No reader needs it (the delayed index holds the start), but the body keeps what was asked.
    delayed = await queue.submit({"service": "echo", "delay_s": 0})
    at = await queue.submit({"service": "echo", "run_at": "2020-01-01T00:00:00Z"})
    assert (await body_of(queue, delayed.id))["delay_s"] == 0.0
    assert (await body_of(queue, at.id))["run_at"] == "2020-01-01T00:00:00Z"
    assert (await queue.get(at.id)).service == "echo"  # type: ignore[union-attr]


def test_the_stored_body_encodes_a_callers_id_as_json() -> None:
    # A caller's id is validated (nothing JSON escapes); one built unvalidated is still encoded, not spliced.
    spec = JobSpec.model_construct(service="echo", id='a"b')
    assert json.loads(stored_body(spec, 'a"b', "s"))["id"] == 'a"b'


@pytest.mark.parametrize(
    "body",
    [
        {
            "service": "echo",
            "id": "j",
            "shape": "s",
            "status": "completed",
        },  # a key the producer never writes
        {"service": "echo", "id": "j"},  # no shape
        {"service": "echo", "id": "j", "shape": "s", "priority": 1.5},
        {"service": "echo", "id": "j", "shape": "s", "requirements": {"isolation": "none", "gpu": 1}},
        {"service": "echo", "id": "j", "shape": "s", "after": "p"},
        {"service": "echo", "id": "j", "shape": "s", "on_parent_failure": "explode"},
        {"service": "echo", "id": "j", "shape": "s", "payload": None},
        {"service": "echo", "id": "j", "shape": "s", "priority": True},  # a bool is no int here
        {"service": "echo", "id": "j", "shape": "s", "timeout_s": False},
        {"service": "echo", "id": "j", "shape": "s", "customer_id": 5},
        {"service": "echo", "id": "j", "shape": "s", "requirements": {"isolation": 1}},
        {"service": "echo", "id": "j", "shape": "s", "on_parent_failure": ["fail"]},
        {"service": ["echo"], "id": "j", "shape": "s"},
    ],
)
def test_a_compact_body_in_no_form_of_the_producers_is_validated(
    body: dict[str, Any], validations: list[str]
) -> None:
    text = json.dumps(body)
    try:
        job = claimed_job(text, attempt=1, worker_id="w")
    except ValueError:
        job = None  # validation refused it
    assert validations == [text]
    if job is not None:
        assert (job.status, job.attempts) == (JobStatus.CLAIMED, 1)


def test_the_fast_path_is_on() -> None:
    # Its self-check against validation (old form and compact form) passed: a failing one would turn it off
    # silently, and every claim would validate again.
    assert jobbody_module._SAME_AS_VALIDATION


@pytest.mark.parametrize(
    "body",
    [
        {"service": "echo", "id": "j", "shape": "s"},
        {"service": "echo", "id": "j", "shape": "s", "run_at": "2020-01-01T00:00:00Z", "delay_s": 1.0},
        {"service": "echo", "id": "j", "shape": "s", "timeout_s": 3, "customer_id": None, "pool": None},
        {"service": "echo", "id": "j", "shape": "s", "after": [], "on_parent_failure": "cancel"},
        {"service": "echo", "id": "j", "shape": "s", "requirements": {}, "payload": {}},
        {"service": "echo", "id": "j", "shape": "s", "requirements": {"ram_gb": 2, "isolation": "strict"}},
    ],
)
def test_a_body_the_claim_reads_directly_is_what_validation_makes_of_it(
    body: dict[str, Any], validations: list[str]
) -> None:
    text = json.dumps(body)
    job = claimed_job(text, attempt=2, worker_id="w")
    assert validations == []
    expected = Job.model_validate_json(text)
    expected.status, expected.attempts, expected.worker_id = JobStatus.CLAIMED, 2, "w"
    assert described(job) == described(expected)


def test_every_key_the_producer_may_write_has_a_check_of_its_form() -> None:
    # A field JobSpec gains is written by `stored_body` when set; until the claim's form knows its type, a body
    # holding it is validated (correct, not fast): this names the field to add.
    from appliance.queue import bodyform

    assert bodyform._TYPES.keys() == bodyform.BODY_KEYS
