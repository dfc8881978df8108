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


class ScriptsMode(StrEnum):
    """How clients run the queue's Lua (docs/security.md, "Redis")."""

    #: EVALSHA of each script's own SHA1: content-addressed, so no other Redis user can change what runs.
    EVAL = "eval"
    #: FCALL of the Function library that `appliance redis setup` loaded (verified against this version's code
    #: at connect); only safe where no untrusted Redis user may run FUNCTION LOAD.
    FUNCTIONS = "functions"


class ChannelsMode(StrEnum):
    """Which pub/sub channels carry the job lifecycle messages."""

    #: The original system's names (`complete_job`, ...), one channel for every queue of the Redis.
    SHARED = "shared"
    #: One set per queue, `appliance:{<queue>}:complete_job`, ...: an ACL channel pattern can confine a tenant.
    QUEUE = "queue"


#: 1 MiB: the largest payload a job may carry by default (a ComfyUI workflow is tens of KiB).
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
#: 256 KiB: the largest result kept in Redis by default; a bigger one goes to output storage.
DEFAULT_MAX_RESULT_BYTES = 256 << 10


class QueueSettings(BaseModel):
    """How the queue leases, retries, expires and announces jobs."""

    model_config = ConfigDict(extra="forbid")

    # 15 s / 5 s: a dead machine's jobs are back in line 10 to 15 s after it died (bench/recovery.py), and a
    # worker still survives two missed heartbeats (a Redis blip of up to about 10 s) without losing its jobs.
    lease_ms: int = Field(
        15_000, ge=1_000, description="How long a claim stays valid without a heartbeat (ms)."
    )
    heartbeat_interval_ms: int = Field(
        5_000,
        ge=100,
        description="How often a worker renews all its leases in one call (ms); keep below lease_ms/2.",
    )
    reaper_interval_ms: int = Field(
        1_000,
        ge=100,
        description="At most one reaper pass per interval across the fleet (ms); between passes each worker's "
        "reaper sleeps until the next lease deadline or retry falls due.",
    )
    reaper_max_sleep_ms: int = Field(
        5_000,
        ge=100,
        description="Longest a worker's reaper sleeps when nothing falls due sooner (ms): bounds how late it "
        "notices a retry another worker scheduled, and how often expired finished records are dropped.",
    )
    result_ttl_s: int = Field(
        86_400, ge=1, description="How long completed, failed and cancelled jobs stay readable (s)."
    )
    dead_ttl_s: int = Field(604_800, ge=1, description="How long dead-lettered jobs stay readable (s).")
    events_maxlen: int = Field(
        10_000,
        ge=0,
        description="Approximate cap on the lifecycle event stream, in entries: an entry is one event, or a "
        "worker round trip's claims (or completions) of several jobs, so it holds up to that many events times "
        "the batch size.",
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
    durable_replicas: int = Field(
        0,
        ge=0,
        description="Durable acknowledgement: a submit or a completion returns only after `WAIT` confirms this "
        "many replicas hold it (0: off; replication stays asynchronous and a failover can lose the last "
        "acknowledged writes). Standalone with replicas and Sentinel only; see docs/operations.md.",
    )
    durable_timeout_ms: int = Field(
        1_000,
        ge=1,
        description="How long a durable submit or completion waits for `durable_replicas` replicas (ms) before "
        "a submit raises NotDurable and a completion logs a warning (the write happened; the replicas did not "
        "confirm it in time).",
    )
    scripts: ScriptsMode = Field(
        ScriptsMode.EVAL,
        description=(
            "How the queue's Lua runs: `eval` (EVALSHA, content-addressed: safe where tenants share a Redis) or "
            "`functions` (FCALL of the library `appliance redis setup` loaded; clients never load it)."
        ),
    )
    channels: ChannelsMode = Field(
        ChannelsMode.SHARED,
        description=(
            "Lifecycle pub/sub channels: `shared` (the original names, every queue on one channel) or `queue` "
            "(`appliance:{<queue>}:<name>`, which an ACL channel pattern can confine; use it where tenants share "
            "a Redis). On a Cluster (`redis.mode = cluster`) the channels are always per queue and sharded."
        ),
    )
    max_payload_bytes: int = Field(
        DEFAULT_MAX_PAYLOAD_BYTES,
        ge=1_024,
        description="Largest job a submit accepts: the stored job JSON, payload included (bytes).",
    )
    max_result_bytes: int = Field(
        DEFAULT_MAX_RESULT_BYTES,
        ge=1_024,
        description=(
            "Largest result JSON kept in Redis (bytes); a worker stores a bigger one in output storage and "
            "completes the job with a reference to it."
        ),
    )
