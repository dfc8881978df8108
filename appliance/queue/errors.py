"""Queue errors, and the one mapping from the scripts' status codes to them."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ScriptCode(IntEnum):
    """Status codes the Lua scripts return (see each script's `Returns:` header)."""

    OK = 1
    #: The job was flagged for cancellation while it ran (heartbeat/progress) or was cancelled at once (cancel).
    CANCEL_REQUESTED = 2
    #: fail: the retry was scheduled / the job went to the dead letter / it failed for good.
    RETRY_SCHEDULED = 3
    DEAD = 4
    FAILED = 5
    CANCELLED = 6
    #: submit: the job waits for its parents (status blocked).
    BLOCKED = 7
    #: complete: the job completed and released waiting children (due now in the delayed set).
    RELEASED_CHILDREN = 8
    NOT_FOUND = -1
    #: The caller's fencing token no longer owns the job (lease expired, reclaimed, or finished).
    LEASE_LOST = -2
    ALREADY_FINISHED = -3
    DUPLICATE = -4
    WRONG_SHAPE = -5
    #: retry: the job is not failed or dead.
    NOT_RETRYABLE = -6
    #: submit: a parent named in `after` does not exist.
    PARENT_NOT_FOUND = -7


class QueueError(Exception):
    """Base class of every error the queue raises."""


class NotDurable(QueueError):
    """A submit was written on the primary, but `WAIT` saw fewer replicas confirm it than
    `queue.durable_replicas` within `queue.durable_timeout_ms`: a failover now could lose it. (A completion in
    the same state logs a warning instead: its worker could do nothing else about it.)"""

    def __init__(self, confirmed: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"written on the primary, but only {confirmed} of {wanted} replica(s) confirmed it within "
            f"{timeout_ms} ms (queue.durable_replicas / queue.durable_timeout_ms): it may be lost if the primary "
            "fails now"
        )
        self.confirmed, self.wanted = confirmed, wanted
        #: The jobs the write concerned, where the caller knows them (a submit's new id).
        self.job_ids: list[str] = []
        #: What the calls returned (they ran): a completion goes on with its codes.
        self.results: list[Any] = []


class InvalidJob(QueueError, ValueError):
    """A job, requirement or capability failed validation; the message names the field."""


class TooLarge(QueueError, ValueError):
    """A job or a result is bigger than the limit the queue keeps in Redis; the message names both."""

    def __init__(self, what: str, size: int, setting: str, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit queue.{setting}={limit}")
        self.size, self.setting, self.limit = size, setting, limit


class PayloadTooLarge(TooLarge, InvalidJob):
    """A submitted job (its JSON, payload included) exceeds `queue.max_payload_bytes`."""


class ResultTooLarge(TooLarge):
    """A result exceeds `queue.max_result_bytes`: store it in output storage and complete with a reference."""


class JobNotFound(QueueError, KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id!r} not found (unknown id, or its result expired)"


class LeaseLost(QueueError):
    """The fencing token is stale: another worker owns the job now, or it already finished."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"lease on job {job_id!r} was lost; not writing its outcome")
        self.job_id = job_id


class DuplicateJob(QueueError):
    """A caller-chosen id exists already (or appears twice in one `submit_many` batch).

    `submitted` lists the jobs of the same `submit_many` call that were enqueued anyway: empty, except when
    another client submitted one of the batch's ids between the batch's check and its writes.
    """

    def __init__(self, job_id: str, message: str | None = None, submitted: list[Any] | None = None) -> None:
        super().__init__(message or f"a job with id {job_id!r} already exists")
        self.job_id = job_id
        self.submitted: list[Any] = submitted or []


class ParentNotFound(InvalidJob):
    """A job's `after` names a job that does not exist (never submitted, or its record expired): nothing was
    submitted. A job can only wait for jobs that exist, so no cycle can form."""

    def __init__(self, job_id: str, parent: str | None) -> None:
        which = f"job {parent!r}" if parent else "a job it names"
        super().__init__(
            f"after: {which} not found (unknown id, or its record expired); job {job_id!r} was not submitted"
        )
        self.job_id, self.parent = job_id, parent


class WrongShape(QueueError):
    """The caller named a shape that is not the job's (a stale cache, or a record changed under it): nothing
    was written."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} is not of the shape the call named; nothing was changed")
        self.job_id = job_id


class JobAlreadyFinished(QueueError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} has already finished")
        self.job_id = job_id


class JobNotRetryable(QueueError):
    """Only a failed or dead job can be put back in line."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} is not failed or dead; only those can be retried")
        self.job_id = job_id


def raise_for_code(code: int, job_id: str) -> int:
    """Turn a negative script code into its exception; return non-negative codes unchanged."""
    if code >= 0:
        return code
    if code == ScriptCode.NOT_FOUND:
        raise JobNotFound(job_id)
    if code == ScriptCode.LEASE_LOST:
        raise LeaseLost(job_id)
    if code == ScriptCode.ALREADY_FINISHED:
        raise JobAlreadyFinished(job_id)
    if code == ScriptCode.DUPLICATE:
        raise DuplicateJob(job_id)
    if code == ScriptCode.WRONG_SHAPE:
        raise WrongShape(job_id)
    if code == ScriptCode.NOT_RETRYABLE:
        raise JobNotRetryable(job_id)
    if code == ScriptCode.PARENT_NOT_FOUND:
        raise ParentNotFound(job_id, None)
    raise QueueError(f"queue script returned unknown code {code} for job {job_id!r}")
