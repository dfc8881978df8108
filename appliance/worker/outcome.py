"""What becomes of a job once its connector call ended: complete, fail (retryable or not), cancelled, handed
back, or dropped because the lease is gone. One pure function decides, so every path is testable on its own.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from appliance.worker.connectors.base import ConnectorError, JobCancelled


class StopReason(StrEnum):
    """Why the runtime interrupted a job before its connector finished."""

    #: The job's cancellation was requested (queue.cancel).
    CANCEL = "cancel"
    #: It ran past its timeout_s (or the connector's default).
    TIMEOUT = "timeout"
    #: The queue says our lease is gone (expired and re-leased, or finished elsewhere).
    LOST = "lost"
    #: The worker is stopping and the drain grace ran out, or a second signal came.
    HANDBACK = "handback"


class OutcomeKind(StrEnum):
    COMPLETE = "complete"
    FAIL = "fail"
    CANCELLED = "cancelled"
    RELEASE = "release"
    #: Nothing is written: the fencing token no longer owns the job.
    DROP = "drop"


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    result: dict[str, Any] | None = None
    error: str = ""
    retryable: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    #: The result as the queue stores it (`compact_json`), when the runner encoded it already to measure it.
    encoded: str = ""

    def describe(self) -> str:
        if self.kind is OutcomeKind.FAIL:
            return f"failed ({'retryable' if self.retryable else 'permanent'}, {self.details.get('kind')}): {self.error}"
        return self.kind.value


#: Exceptions of our own making that mean a bad payload rather than a passing problem.
_PERMANENT_BUILTINS = (ValueError, TypeError, KeyError, LookupError, json.JSONDecodeError)
#: Builtin exceptions that mean the service or network hiccupped.
_RETRYABLE_BUILTINS = (ConnectionError, TimeoutError, OSError, asyncio.IncompleteReadError)


def failure_of(exc: BaseException) -> Outcome:
    """Classify a connector exception: retryable (timeouts, 429/5xx, connection loss) or permanent."""
    if isinstance(exc, ConnectorError):
        details: dict[str, Any] = {"kind": exc.code, "code": exc.code, **_jsonable(exc.details)}
        return Outcome(
            OutcomeKind.FAIL, error=exc.message or str(exc), retryable=exc.retryable, details=details
        )
    name = type(exc).__name__
    if isinstance(exc, _RETRYABLE_BUILTINS):
        return Outcome(
            OutcomeKind.FAIL,
            error=f"{name}: {exc}",
            retryable=True,
            details={"kind": "connection", "code": "connection", "exception": name},
        )
    if isinstance(exc, _PERMANENT_BUILTINS):
        return Outcome(
            OutcomeKind.FAIL,
            error=f"{name}: {exc}",
            retryable=False,
            details={"kind": "bad_payload", "code": "bad_payload", "exception": name},
        )
    # A connector bug we cannot classify: retrying is bounded by max_retries and the history shows each try.
    return Outcome(
        OutcomeKind.FAIL,
        error=f"{name}: {exc}",
        retryable=True,
        details={"kind": "internal_error", "code": "internal_error", "exception": name},
    )


def decide(
    result: dict[str, Any] | None,
    exc: BaseException | None,
    stop: StopReason | None,
    *,
    timeout_s: float | None = None,
) -> Outcome:
    """The outcome of one attempt from what the connector returned or raised and why we stopped it, if we did.

    A lost lease always wins (writing would be refused anyway); a finished result wins over every other stop
    reason (the work is done, keep it); otherwise the stop reason explains the exception it caused.
    """
    if stop is StopReason.LOST:
        return Outcome(OutcomeKind.DROP)
    if exc is None:
        return Outcome(OutcomeKind.COMPLETE, result=result or {})
    if stop is StopReason.HANDBACK:
        return Outcome(OutcomeKind.RELEASE)
    if stop is StopReason.CANCEL or (stop is None and isinstance(exc, JobCancelled)):
        return Outcome(OutcomeKind.CANCELLED)
    if stop is StopReason.TIMEOUT:
        limit = f"{timeout_s:g}s" if timeout_s is not None else "its limit"
        return Outcome(
            OutcomeKind.FAIL,
            error=f"job timed out after {limit}",
            retryable=True,
            details={
                "kind": "timeout",
                "code": "timeout",
                **({"timeout_s": timeout_s} if timeout_s is not None else {}),
            },
        )
    if isinstance(exc, asyncio.CancelledError):
        # Cancelled without a reason of ours: the worker is going down; hand the job back.
        return Outcome(OutcomeKind.RELEASE)
    return failure_of(exc)


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in details.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = str(value)
        out[str(key)] = value
    return out
