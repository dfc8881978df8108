"""What one event's delivery carries: its stable webhook-id and the exact JSON body, built from the job's record
as the queue's reader returns it."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from appliance.queue.models import Job, JobStatus
from appliance.webhooks.models import Delivery, EventType, Registration, body_of

#: The job status each terminal event reports when the record says otherwise (retried since, or expired).
_STATUS = {
    EventType.COMPLETED: JobStatus.COMPLETED,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}
#: The terminal event of each finished status.
TERMINAL_OF = {
    JobStatus.COMPLETED: EventType.COMPLETED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.DEAD: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
}


def webhook_id(*parts: str) -> str:
    """A stable id from what identifies the event (`msg_` + 32 hex digits): the feed and `register` compute the
    same one for the same end of the same job, so a receiver sees one id however often it is sent."""
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"msg_{digest[:32]}"


def _ms(at: datetime | None) -> int | None:
    return int(at.timestamp() * 1000) if at is not None else None


def job_data(job: Job | None, job_id: str, event: EventType, max_result_bytes: int) -> dict[str, Any]:
    """The `data` member: the job's state and outcome summary (its result when small enough)."""
    if job is None:  # the record expired before the event was read
        status = _STATUS.get(event, JobStatus.RUNNING)
        return {"id": job_id, "status": status.value}
    data = job.model_dump(
        mode="json",
        include={"id", "service", "status", "attempts", "created_at", "finished_at", "error", "workflow_id"},
    )
    if event in _STATUS and not job.status.finished:
        data["status"] = _STATUS[event].value
    if event is EventType.PROGRESS:
        data["progress"] = job.progress
    elif event is EventType.COMPLETED:
        encoded = json.dumps(job.result, separators=(",", ":"), default=str)
        if len(encoded.encode()) <= max_result_bytes:
            data["result"] = job.result
        else:
            data["result_omitted"] = True
    return data


def delivery_of(
    queue: str,
    registration: Registration,
    job_id: str,
    job: Job | None,
    event: EventType,
    *,
    at_ms: int,
    progress_key: str = "",
    max_result_bytes: int,
) -> Delivery:
    """The delivery of `event` of job `job_id` to `registration`. A terminal event's id is that of the job's end
    (its finish time); a progress event's that of its stream entry (`progress_key`)."""
    if event is EventType.PROGRESS:
        ident = webhook_id(queue, job_id, event.value, progress_key)
        when = at_ms
    else:
        finished = _ms(job.finished_at) if job is not None else None
        ident = webhook_id(queue, job_id, event.value, str(finished if finished is not None else at_ms))
        when = finished or at_ms
    stamp = datetime.fromtimestamp(when / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
    body = body_of(event, stamp, job_data(job, job_id, event, max_result_bytes))
    return Delivery(
        id=ident,
        tenant=registration.tenant,
        job_id=job_id,
        type=event,
        url=registration.url,
        body=json.dumps(body, separators=(",", ":"), default=str),
        created_ms=at_ms or int(time.time() * 1000),
    )
