"""Queue tunables. Every duration names its unit."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class EventsMode(StrEnum):
    """Where the scripts publish lifecycle events."""

    #: A capped stream (replayable, what the monitor and metrics read) and pub/sub (push, the original's channels).
    STREAM_AND_PUBSUB = "stream+pubsub"
    STREAM = "stream"
    PUBSUB = "pubsub"
    NONE = "none"


class QueueSettings(BaseModel):
    """How the queue leases, retries, expires and announces jobs."""

    model_config = ConfigDict(extra="forbid")

    lease_ms: int = Field(
        30_000, ge=1_000, description="How long a claim stays valid without a heartbeat (ms)."
    )
    heartbeat_interval_ms: int = Field(
        10_000,
        ge=100,
        description="How often a worker renews all its leases in one call (ms); keep below lease_ms/2.",
    )
    reaper_interval_ms: int = Field(
        1_000,
        ge=100,
        description="How often expired leases and due retries are moved back (ms); one reaper per interval.",
    )
    result_ttl_s: int = Field(
        86_400, ge=1, description="How long completed, failed and cancelled jobs stay readable (s)."
    )
    dead_ttl_s: int = Field(604_800, ge=1, description="How long dead-lettered jobs stay readable (s).")
    events_maxlen: int = Field(
        10_000, ge=0, description="Approximate cap on the lifecycle event stream (entries)."
    )
    events: EventsMode = Field(
        EventsMode.STREAM_AND_PUBSUB, description="Where lifecycle events are published."
    )
    priority_step_ms: int = Field(
        60_000,
        ge=0,
        description="Each priority point counts as this much earlier submission (ms): priority wins, starvation is bounded.",
    )
    retry_base_ms: int = Field(
        1_000,
        ge=0,
        description="First retry delay (ms); doubles per attempt, with equal jitter (half fixed, half random).",
    )
    retry_max_ms: int = Field(300_000, ge=0, description="Upper bound of a retry delay (ms).")
    worker_ttl_ms: int = Field(
        60_000, ge=1_000, description="A worker not seen for this long no longer counts for matching (ms)."
    )
    claim_slack_ms: int = Field(
        50,
        ge=0,
        description=(
            "Concurrent workers of one class may take jobs of different shapes up to this much out of "
            "submission order (ms) instead of racing for the single best one; 0 keeps the order strict."
        ),
    )
