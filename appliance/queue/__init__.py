"""The job queue: capability-matched, Lua-claimed, leased jobs on Redis."""

from appliance.config.queue import EventsMode, QueueSettings
from appliance.queue.client import Queue
from appliance.queue.errors import (
    DuplicateJob,
    InvalidJob,
    JobAlreadyFinished,
    JobNotFound,
    JobNotRetryable,
    LeaseLost,
    NotDurable,
    ParentNotFound,
    PayloadTooLarge,
    QueueError,
    ResultTooLarge,
)
from appliance.queue.housekeeper import ReapResult
from appliance.queue.models import (
    Capabilities,
    ClaimedJob,
    Isolation,
    Job,
    JobSpec,
    JobStatus,
    ParentFailure,
    QueueStats,
    Requirements,
)
from appliance.queue.producer import parse_spec
from appliance.queue.session import WorkerSession

__all__ = [
    "Capabilities",
    "ClaimedJob",
    "DuplicateJob",
    "EventsMode",
    "InvalidJob",
    "Isolation",
    "Job",
    "JobAlreadyFinished",
    "JobNotFound",
    "JobNotRetryable",
    "JobSpec",
    "JobStatus",
    "ParentFailure",
    "LeaseLost",
    "NotDurable",
    "ParentNotFound",
    "PayloadTooLarge",
    "Queue",
    "QueueError",
    "ResultTooLarge",
    "QueueSettings",
    "QueueStats",
    "ReapResult",
    "Requirements",
    "WorkerSession",
    "parse_spec",
]
