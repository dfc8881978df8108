"""What the API takes and answers, as pydantic models: the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from appliance.queue.models import Job, JobSpec, QueueStats
from appliance.webhooks import WebhookRequest


def _server_fields(schema: dict[str, Any]) -> None:
    """The document shows what a client may send: no `id`; `customer_id` only as the key's own."""
    properties = schema.get("properties", {})
    properties.pop("id", None)
    if "customer_id" in properties:
        properties["customer_id"] = {
            "description": "Set from the API key; a body may only repeat the key's own customer.",
            "anyOf": [{"type": "string"}, {"type": "null"}],
        }


class JobSubmission(JobSpec):
    """A job spec as `POST /v1/jobs` takes it: the queue's JobSpec plus an optional webhook. `id` is chosen by
    the server (send an Idempotency-Key header to make a submit safe to repeat) and `customer_id` comes from
    the API key: a body naming another customer is refused."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_server_fields)

    webhook: WebhookRequest | None = Field(None, description="Where to POST this job's events (signed).")

    def spec(self, **update: Any) -> JobSpec:
        """The queue's JobSpec of this submission with `update` applied. Built from the fields as validated
        here (a JobSubmission is a JobSpec plus `webhook`), not dumped and validated again."""
        fields = {name: getattr(self, name) for name in JobSpec.model_fields}
        return JobSpec.model_construct(**{**fields, **update})


class BatchSubmission(BaseModel):
    """`POST /v1/jobs/batch`: every job is submitted, or none is."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSubmission] = Field(min_length=1, description="The jobs, each as POST /v1/jobs takes it.")


class JobList(BaseModel):
    """A page of the caller's jobs, newest first; pass `next_cursor` as `cursor` for the next page (a page can
    be short, or even empty, and still have a next one: it stops when `next_cursor` is null)."""

    jobs: list[Job]
    next_cursor: str | None = None


class BatchResult(BaseModel):
    jobs: list[Job]


class CancelResult(BaseModel):
    """`cancelled`: it was waiting and is cancelled now; `requested`: its worker was told to stop it."""

    outcome: str = Field(pattern="^(cancelled|requested)$")
    job: Job


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class MachineView(BaseModel):
    machine_id: str
    info: dict[str, Any] | None = None
    status: dict[str, Any] | None = None


class MachineList(BaseModel):
    machines: list[MachineView]


class PoolView(BaseModel):
    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    waiting: int = 0
    shapes: int = 0


class PoolList(BaseModel):
    pools: list[PoolView]


class WebhookSecret(BaseModel):
    """The tenant's Standard Webhooks signing secret (`whsec_...`)."""

    secret: str


class LiveEvent(BaseModel):
    """One lifecycle event of a job, as SSE `data:` and WebSocket messages carry it. `id` is the event's id: its
    stream entry's id, with `.<i>` for event i of an entry shared by several jobs' events (SSE `id:`; send it back
    as Last-Event-ID to resume after it)."""

    id: str
    job: str
    event: str
    status: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)


__all__ = [
    "BatchResult",
    "BatchSubmission",
    "CancelResult",
    "Health",
    "JobList",
    "JobSubmission",
    "LiveEvent",
    "MachineList",
    "PoolList",
    "QueueStats",
]
