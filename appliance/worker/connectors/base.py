"""The one interface every connector implements; the worker runtime talks only to this.

Connectors know nothing of Redis: the runtime claims a job, turns it into a `ConnectorJob`,
calls `process()`, and maps the result or the raised `ConnectorError` onto the queue.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# OutputFile is re-exported: connectors import it from here.
from appliance.worker.storage import OutputFile, OutputStorage

OptionsT = TypeVar("OptionsT", bound="ConnectorOptions")
_new = object.__new__
_set = object.__setattr__


class ConnectorOptions(BaseModel):
    """Settings every connector takes. A connector's own settings arrive in `extra` and are fields of its
    subclass of this model (`Connector.Options`): `typed()` validates them once, when the worker is wired, so a
    mistyped option fails at start with the key named, never in the middle of a job. Keys a connector does not
    know are ignored, as they always were (one `connectors.<name>.extra` may serve several connectors)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    base_url: str | None = None
    #: The secret itself, already read from its file by the caller; never logged, never in repr().
    api_key: str | None = Field(default=None, repr=False)
    #: Per-job limit when the job has no timeout_s of its own.
    default_timeout_s: float = Field(default=600.0, gt=0)
    concurrency: int = Field(default=1, ge=1)
    #: Connector-specific settings, untyped until `typed()` folds them into the connector's own model.
    extra: dict[str, Any] = Field(default_factory=dict)

    def typed(self, model: type[OptionsT]) -> OptionsT:
        """These options as `model` (a subclass carrying the connector's own fields, validated from `extra`);
        ValueError names every wrong key on one line."""
        if isinstance(self, model):
            return self
        fields = {**self.model_dump(exclude={"extra"}), **self.extra}
        try:
            return model.model_validate(fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}" for err in exc.errors()
            )
            raise ValueError(problems) from None


@dataclass(frozen=True)
class ConnectorJob:
    """What a connector gets to work on (a view of the queue's Job)."""

    id: str
    service: str
    payload: dict[str, Any]
    attempt: int
    timeout_s: float | None
    customer_id: str | None = None
    #: The attempt's fencing token: with `id` it names this attempt (a lost attempt of the same job may still
    #: be winding down on this worker while this one runs).
    token: str = ""
    #: The results of the jobs this one waited for (`after`), by parent id (None for a parent whose failure
    #: the job's `on_parent_failure: ignore` let pass). Empty for a job without parents.
    parents: Mapping[str, Any] = field(default_factory=dict)


_JOB_FIELDS = ("id", "service", "payload", "attempt", "timeout_s", "customer_id", "token", "parents")


def _built_as_init() -> bool:
    """Whether `connector_job` makes what `ConnectorJob(...)` makes: its fields, in order, are the ones it fills
    (a field added and not there turns the shortcut off instead of leaving it out)."""
    return tuple(f.name for f in fields(ConnectorJob)) == _JOB_FIELDS and not hasattr(
        ConnectorJob, "__slots__"
    )


_FAST_JOB = _built_as_init()


def connector_job(claimed: Any, timeout_s: float | None) -> ConnectorJob:
    """The ConnectorJob of a claimed job (anything with `id`, `service`, `payload`, `attempt`, `customer_id` and
    `token`: the runtime's `Claim`), as `ConnectorJob(...)` makes it, without the frozen dataclass's
    `object.__setattr__` per field (a job per call). The payload is the claimed job's own: the run's dict."""
    if not _FAST_JOB:  # pragma: no cover - only if ConnectorJob changes shape
        return ConnectorJob(
            id=claimed.id,
            service=claimed.service,
            payload=claimed.payload,
            attempt=claimed.attempt,
            timeout_s=timeout_s,
            customer_id=claimed.customer_id,
            token=claimed.token,
        )
    job = _new(ConnectorJob)
    _set(
        job,
        "__dict__",
        {
            "id": claimed.id,
            "service": claimed.service,
            "payload": claimed.payload,
            "attempt": claimed.attempt,
            "timeout_s": timeout_s,
            "customer_id": claimed.customer_id,
            "token": claimed.token,
            "parents": {},
        },
    )
    return job  # type: ignore[no-any-return]


#: Called with (percent 0..100, optional message) whenever a connector learns of progress.
ProgressCallback = Callable[[float, str | None], Awaitable[None]]


@dataclass
class ConnectorResult:
    """What a finished job hands back; `data` must be JSON-serialisable and small (no base64 blobs)."""

    data: dict[str, Any]
    outputs: list[OutputFile] = field(default_factory=list)
    service_job_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job result as stored in the queue."""
        result: dict[str, Any] = dict(self.data)
        result["outputs"] = [o.to_dict() for o in self.outputs]
        if self.service_job_id is not None:
            result["service_job_id"] = self.service_job_id
        return result


class ConnectorError(Exception):
    """A job failed; `retryable` tells the queue whether another attempt may succeed."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str = "error", details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details: dict[str, Any] = details or {}

    @property
    def retry_after_s(self) -> float | None:
        """Seconds the service asked us to wait before retrying, when it said so."""
        value = self.details.get("retry_after_s")
        return float(value) if value is not None else None


class RetryableError(ConnectorError):
    """Transient: connection refused, 5xx, 429, timeouts, service restarted mid-job."""

    retryable = True


class PermanentError(ConnectorError):
    """Retrying cannot help: invalid input, unknown model, auth failure, the job itself failed."""

    retryable = False


class JobCancelled(PermanentError):
    """`process()` stopped because `cancel()` was called for its attempt; the runtime finishes the job as cancelled."""

    def __init__(
        self,
        message: str = "job cancelled",
        *,
        code: str = "cancelled",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)


@dataclass
class ConnectorCapabilities:
    """What this connector can serve; merged by the runtime into the worker's queue Capabilities."""

    services: list[str]
    models: dict[str, list[str]] = field(default_factory=dict)
    gpu_memory_gb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Connector(ABC):
    """Base of all connectors; one instance per worker process, possibly running several jobs at once."""

    name: ClassVar[str]
    #: The model of this connector's options (common fields plus its own `extra` ones).
    Options: ClassVar[type[ConnectorOptions]] = ConnectorOptions
    max_concurrency: int = 1

    def __init__(self, *, options: ConnectorOptions, storage: OutputStorage) -> None:
        self.options = options.typed(self.Options)
        self.storage = storage
        self.max_concurrency = self.options.concurrency

    async def start(self) -> None:
        """Open sessions/clients; called once before the first job."""
        return None

    async def close(self) -> None:
        """Release sessions/clients; called once at shutdown."""
        return None

    @abstractmethod
    async def capabilities(self) -> ConnectorCapabilities:
        """Services, models and resources this connector offers right now."""

    @abstractmethod
    async def health(self) -> bool:
        """True when the backing service answers."""

    @abstractmethod
    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        """Run one job to completion; raise RetryableError/PermanentError on failure."""

    @abstractmethod
    async def cancel(self, job_id: str, token: str | None = None) -> None:
        """Interrupt that attempt of the job (the one whose ConnectorJob.token is `token`), or every attempt
        of it when `token` is None; idempotent, a no-op for unknown jobs. Never touches another attempt."""
