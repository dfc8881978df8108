"""The webhook models: what a client asks for, what a delivery carries, what the dead list shows."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EventType(StrEnum):
    """The events a webhook can subscribe to (Standard Webhooks `type`)."""

    COMPLETED = "job.completed"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    PROGRESS = "job.progress"


#: What a webhook without `events` receives: the end of the job, however it ends.
TERMINAL_EVENTS = (EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED)


class WebhookRequest(BaseModel):
    """The `webhook` member of a job submission."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048,
        pattern=r"^[hH][tT][tT][pP][sS]?://",
        description="Where events are POSTed (http or https); it must resolve to public addresses.",
    )
    events: list[EventType] = Field(
        default_factory=lambda: list(TERMINAL_EVENTS),
        min_length=1,
        description="The events to send (default: job.completed, job.failed, job.cancelled).",
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(value))


class Registration(BaseModel):
    """A job's webhook as stored: whose it is, where it goes, what it wants."""

    tenant: str
    url: str
    events: list[EventType]


class Delivery(BaseModel):
    """One event on its way to one URL (stored in the outbox until delivered or given up)."""

    id: str = Field(description="The webhook-id: stable across retries, so receivers de-duplicate on it.")
    tenant: str
    job_id: str
    type: EventType
    url: str
    #: The exact body sent (and signed), JSON text: built once, so every retry sends the same bytes.
    body: str
    #: When the event happened (ms): the retries stop `webhooks.max_age_s` after it.
    created_ms: int
    attempts: int = 0
    last_error: str | None = None
    last_attempt_ms: int | None = None


class DeadDelivery(BaseModel):
    """A delivery given up after `webhooks.max_age_s` (or put there by hand), as the dead list shows it."""

    id: str
    job_id: str
    type: EventType
    url: str
    attempts: int
    created_at_ms: int
    died_at_ms: int
    last_error: str | None = None


class DeadPage(BaseModel):
    """One page of a tenant's dead list, newest first; pass `next_cursor` back for the next page."""

    items: list[DeadDelivery]
    next_cursor: str | None = None


def body_of(event: EventType, timestamp: str, data: dict[str, Any]) -> dict[str, Any]:
    """The Standard Webhooks payload shape: `type`, `timestamp`, `data`."""
    return {"type": event.value, "timestamp": timestamp, "data": data}
