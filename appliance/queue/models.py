"""The queue's records: jobs, what they require, and what workers offer.

Pydantic models guard the edges (submit, registration, CLI); every validation error names its field.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Job, worker and machine ids: safe in Redis keys, channel names and log lines without escaping.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
#: Service names (`comfyui`, `openai_text`, `echo`), pools, regions, tags.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
_ID_RE = re.compile(ID_PATTERN)


class JobStatus(StrEnum):
    #: Waiting in its shape's ready index (or for its retry delay to pass).
    PENDING = "pending"
    #: Leased by a worker that has not reported progress yet.
    CLAIMED = "claimed"
    #: Leased and reporting progress.
    RUNNING = "running"
    COMPLETED = "completed"
    #: Failed permanently (a non-retryable error).
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Retryable failures exhausted max_retries: kept in the dead letter with the error history.
    DEAD = "dead"
    #: Waiting for its parents (`after`) to finish; in no index a claim reads, so neither waiting nor unworkable.
    BLOCKED = "blocked"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD)


class ParentFailure(StrEnum):
    """What becomes of a job waiting for parents when one of them fails, dies or is cancelled."""

    #: It fails too (status failed, an error naming the parent), and so do its own waiting children.
    FAIL = "fail"
    #: It is cancelled, and so are its own waiting children (by their policies).
    CANCEL = "cancel"
    #: That parent counts as finished: the job runs once the others have finished.
    IGNORE = "ignore"


#: Most parents one job may wait for (`after`): the parents' results all reach the child's worker.
MAX_PARENTS = 100

#: Machine types a job may ask for: a GPU machine (ComfyUI workers) or an API machine (connector workers).
MachineKind = Literal["gpu", "api"]


class Isolation(StrEnum):
    #: Any worker serving the service may run the job.
    NONE = "none"
    #: Only workers that isolate customers (loose or strict) and do not deny this customer.
    LOOSE = "loose"
    #: Only strict workers that list this customer as allowed.
    STRICT = "strict"


def _check_names(values: list[str], field: str) -> list[str]:
    for value in values:
        if not _NAME_RE.match(value):
            raise ValueError(f"{field}: {value!r} is not a valid name (letters, digits, _ . : / -; max 64)")
    return sorted(set(values))


class Requirements(BaseModel):
    """What a job needs from the worker that runs it."""

    model_config = ConfigDict(extra="forbid")

    gpu_memory_gb: float | None = Field(None, ge=0, le=4096, description="Minimum GPU memory (GB).")
    ram_gb: float | None = Field(None, ge=0, le=65536, description="Minimum system RAM (GB).")
    cpu_cores: int | None = Field(None, ge=0, le=4096, description="Minimum CPU cores.")
    gpu_count: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Minimum GPUs bound to the worker (a multi-GPU job asks for 2 or more).",
    )
    machine_type: MachineKind | None = Field(
        None, description="Run only on workers of a machine of this type (gpu or api)."
    )
    models: list[str] = Field(
        default_factory=list, description="Models the worker must have loaded/available."
    )
    isolation: Isolation = Field(Isolation.NONE, description="Customer isolation the job demands.")
    pool: str | None = Field(None, pattern=NAME_PATTERN, description="Run only on workers of this pool.")
    region: str | None = Field(None, pattern=NAME_PATTERN, description="Run only on workers in this region.")
    tags: list[str] = Field(default_factory=list, description="Tags the worker must all have.")
    not_tags: list[str] = Field(default_factory=list, description="Tags the worker must not have.")
    workflow: str | None = Field(
        None, pattern=NAME_PATTERN, description="Route to workers pinned to this workflow (or unpinned ones)."
    )

    @field_validator("tags", "not_tags")
    @classmethod
    def _tags(cls, value: list[str], info: Any) -> list[str]:
        return _check_names(value, info.field_name)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        for model in value:
            if not model or len(model) > 256 or any(c in model for c in "\n\r\0"):
                raise ValueError(f"models: {model!r} is not a valid model name")
        return sorted(set(value))

    @model_validator(mode="after")
    def _no_contradiction(self) -> Requirements:
        both = set(self.tags) & set(self.not_tags)
        if both:
            raise ValueError(f"tags and not_tags both name {sorted(both)}")
        return self


#: What `Requirements()` holds (every default), and which of those values are lists (made anew for each job).
_NO_REQUIREMENTS = dict(Requirements().__dict__)
_NO_REQUIREMENTS_LISTS = tuple(name for name, value in _NO_REQUIREMENTS.items() if type(value) is list)


def no_requirements() -> Requirements:
    """`Requirements()` without validating its defaults again: the default of every job that names none (that
    validation was about 40% of a plain job's). pydantic does not validate what a default factory returns."""
    values = _NO_REQUIREMENTS.copy()
    for name in _NO_REQUIREMENTS_LISTS:
        values[name] = []
    built = Requirements.__new__(Requirements)
    object.__setattr__(built, "__dict__", values)
    object.__setattr__(built, "__pydantic_fields_set__", set())
    object.__setattr__(built, "__pydantic_extra__", None)
    object.__setattr__(built, "__pydantic_private__", None)
    return built


class Capabilities(BaseModel):
    """What a worker offers; the matching counterpart of `Requirements`."""

    model_config = ConfigDict(extra="forbid")

    services: list[str] = Field(min_length=1, description="Job services (service_required values) it runs.")
    gpu_memory_gb: float = Field(0, ge=0)
    ram_gb: float = Field(0, ge=0)
    cpu_cores: int = Field(0, ge=0)
    gpu_count: int = Field(0, ge=0, description="GPUs bound to this worker (a GPU slot has 1).")
    machine_type: MachineKind | None = Field(None, description="Type of the worker's machine (gpu or api).")
    models: dict[str, list[str]] | Literal["all"] = Field(
        default_factory=dict, description="Available models per service, or 'all'."
    )
    customer_isolation: Isolation = Isolation.NONE
    allowed_customers: list[str] = Field(default_factory=list)
    denied_customers: list[str] = Field(default_factory=list)
    pool: str | None = Field(None, pattern=NAME_PATTERN)
    region: str | None = Field(None, pattern=NAME_PATTERN)
    tags: list[str] = Field(default_factory=list)
    workflow_id: str | None = Field(
        None, pattern=NAME_PATTERN, description="Pin: only jobs routed to this workflow."
    )

    @field_validator("services", "tags")
    @classmethod
    def _names(cls, value: list[str], info: Any) -> list[str]:
        return _check_names(value, info.field_name)


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or ±Infinity inside `value`, or None (iterative: no recursion limit)."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}") for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


#: Deepest nesting of lists and objects a payload may have. Real payloads (ComfyUI graphs) are a handful of levels;
#: serialising goes recursive (pydantic stops near 255 levels, Lua's cjson at 1000), so a bound well below both
#: makes a pathological payload one clear error instead of a crash somewhere on its way.
MAX_PAYLOAD_DEPTH = 100


def nesting_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests lists/objects deeper than `limit` (iterative: any depth is safe to ask about)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class JobSpec(BaseModel):
    """A job as a client submits it."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, pattern=ID_PATTERN, description="Caller-chosen id (idempotent submit); generated if absent."
    )
    service: str = Field(
        pattern=NAME_PATTERN, description="The service that runs the job (comfyui, openai_text, echo, ...)."
    )
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(
        0, ge=-1000, le=1000, description="Higher runs first; see QueueSettings.priority_step_ms."
    )
    requirements: Requirements = Field(default_factory=no_requirements)
    customer_id: str | None = Field(None, pattern=ID_PATTERN)
    workflow_id: str | None = Field(None, pattern=ID_PATTERN)
    pool: str | None = Field(None, pattern=NAME_PATTERN, description="Shorthand for requirements.pool.")
    max_retries: int = Field(3, ge=0, le=100)
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400, description="Per-attempt run time limit (s).")
    run_at: datetime | None = Field(
        None,
        description="Start no earlier than this time (UTC unless it names a zone); until then it waits delayed.",
    )
    delay_s: float | None = Field(
        None,
        ge=0,
        le=366 * 86400,
        description="Start no earlier than this many seconds after submission (server clock).",
    )
    after: list[str] = Field(
        default_factory=list,
        max_length=MAX_PARENTS,
        description="Ids of jobs (of this queue) that must complete before this one runs; each must exist at "
        f"submit, at most {MAX_PARENTS}. Their results reach the job's worker (ConnectorJob.parents).",
    )
    on_parent_failure: ParentFailure = Field(
        ParentFailure.FAIL,
        description="When a parent fails, dies or is cancelled: fail this job, cancel it, or ignore that parent.",
    )

    @field_validator("after")
    @classmethod
    def _parent_ids(cls, value: list[str]) -> list[str]:
        for parent in value:
            if not _ID_RE.match(parent):
                raise ValueError(f"{parent!r} is not a valid job id")
        return list(dict.fromkeys(value))

    @field_validator("run_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @field_validator("payload")
    @classmethod
    def _finite_numbers(cls, value: dict[str, Any]) -> dict[str, Any]:
        # JSON has no NaN or Infinity: stored as JSON they would silently become null.
        if where := _non_finite(value, "payload"):
            raise ValueError(f"{where} is not a finite number (JSON has no NaN or Infinity)")
        return value

    @field_validator("payload")
    @classmethod
    def _payload_depth(cls, value: dict[str, Any]) -> dict[str, Any]:
        if nesting_depth_exceeds(value, MAX_PAYLOAD_DEPTH):
            raise ValueError(f"nested deeper than {MAX_PAYLOAD_DEPTH} levels of lists and objects")
        return value

    @model_validator(mode="after")
    def _customer_for_isolation(self) -> JobSpec:
        if self.requirements.isolation is not Isolation.NONE and not self.customer_id:
            raise ValueError(
                f"requirements.isolation={self.requirements.isolation.value} needs a customer_id"
            )
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give at most one of run_at and delay_s")
        if self.id is not None and self.id in self.after:
            raise ValueError(f"after: job {self.id!r} cannot wait for itself")
        if self.pool and self.requirements.pool and self.pool != self.requirements.pool:
            raise ValueError(f"pool {self.pool!r} contradicts requirements.pool {self.requirements.pool!r}")
        return self


def ms_to_datetime(ms: int | float | str | None) -> datetime | None:
    if ms in (None, "", 0, "0"):
        return None
    return datetime.fromtimestamp(int(float(ms)) / 1000, tz=UTC)


class Job(BaseModel):
    """A job as the queue knows it."""

    id: str
    service: str
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    requirements: Requirements = Field(default_factory=no_requirements)
    customer_id: str | None = None
    workflow_id: str | None = None
    pool: str | None = None
    max_retries: int = 3
    timeout_s: float | None = None
    shape: str = ""
    status: JobStatus = JobStatus.PENDING
    attempts: int = 0
    worker_id: str | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime | None = None
    claimed_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    cancel_requested: bool = False
    #: No live worker can satisfy this job's shape (it would wait forever).
    unworkable: bool = False
    #: Why a waiting job is not claimed although workers could run it: 'queue paused', 'shape paused',
    #: 'customer paused' (see Queue.pauses), or its customer's limit, e.g. 'customer acme at in-flight cap 4/4'
    #: (see Queue.limits). Not unworkable: it runs once resumed, or once the customer may start more.
    held_by: str | None = None
    #: The jobs it waits for (`JobSpec.after`) and what a failed one does to it.
    after: list[str] = Field(default_factory=list)
    on_parent_failure: ParentFailure = ParentFailure.FAIL
    #: While blocked: the parents that have not finished yet.
    waiting_on: list[str] = Field(default_factory=list)


class ClaimedJob(BaseModel):
    """A job leased to a worker: the token fences every later write."""

    job: Job
    token: str
    attempt: int
    lease_deadline_ms: int


class ShapeStats(BaseModel):
    shape: str
    requirements: dict[str, Any]
    waiting: int
    oldest_wait_s: float | None
    live_workers: bool


class QueueStats(BaseModel):
    queue: str
    waiting: int
    delayed: int
    active: int
    dead: int
    unworkable: int
    totals: dict[str, int]
    shapes: list[ShapeStats]
    workers: int
    #: What is paused: 'queue', 'shape:<id>', 'customer:<id>'.
    paused: list[str] = Field(default_factory=list)
    #: Waiting jobs a customer's pause took out of line (not counted in `waiting`).
    held: int = 0
    #: Jobs waiting for their parents (`after`) to finish: not in line, not counted in `waiting`.
    blocked: int = 0
    #: Waiting jobs a customer's limit (in flight, rate) holds out of line: not in `waiting`, not unworkable.
    limited: int = 0
    #: Customer -> how many of its jobs a limit holds and which one, e.g. `3 held: customer acme at in-flight
    #: cap 4/4`.
    limited_by: dict[str, str] = Field(default_factory=dict)
