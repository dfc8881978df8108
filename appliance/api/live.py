"""Live progress: Server-Sent Events per job (`GET /v1/jobs/{id}/events`, resumable with Last-Event-ID) and one
WebSocket (`/v1/ws`) following many jobs. Both read the queue's event stream through the process's EventHub:
what a client missed comes from the stream by range, so a reconnect, even to another API process or after a
restart, loses nothing that the capped stream still holds."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from appliance.api.context import Api, api_of, caller, job_id_of, job_json, owned_job
from appliance.api.hub import Subscription
from appliance.api.keys import Scope
from appliance.api.problems import ProblemError
from appliance.queue import Job
from appliance.queue.events import JobEvent, event_key, start_after

#: An event id: its stream entry's `<ms>-<seq>`, with `.<i>` for event i of an entry of several (JobEvent.id).
_ENTRY_RE = re.compile(r"^\d{1,20}-\d{1,20}(\.\d{1,9})?$")
#: What a bad one is told.
EVENT_ID_EXAMPLE = "an event id like 1700000000000-0 or 1700000000000-0.3"


def event_json(event: JobEvent) -> dict[str, Any]:
    status = event.status
    fields = {k: str(v) for k, v in event.fields.items() if k not in ("event", "job")}
    return {
        "id": event.id,
        "job": event.job,
        "event": str(event.fields.get("event", "")),
        "status": status.value if status else None,
        "fields": fields,
    }


def _ends(event: JobEvent) -> bool:
    meaning = event.meaning
    return bool(meaning and meaning.status and meaning.status.finished)


class _Follower:
    """Sends one job's events in order, each once: the catch-up from the stream, then the hub's live ones. With
    Last-Event-ID (checked by _ENTRY_RE), the events after that one: in the middle of an entry of several events,
    the rest of that entry, then the entries after it."""

    def __init__(self, api: Api, job: Job, last_event_id: str | None) -> None:
        self.api, self.job = api, job
        created = int(job.created_at.timestamp() * 1000) if job.created_at else 0
        #: The key of the last event sent (or named by the client); None: from the job's first millisecond.
        self.last: tuple[int, int, int] | None = None if last_event_id is None else event_key(last_event_id)
        self.start = f"{created}-0"
        self.ended = False

    def fresh(self, event: JobEvent) -> bool:
        key = event.key
        if self.last is not None and key <= self.last:
            return False
        self.last = key
        self.ended = self.ended or _ends(event)
        return True

    async def catch_up(self) -> list[JobEvent]:
        start = self.start if self.last is None else start_after(self.last)
        return [e async for e in self.api.hub.catch_up(self.job.id, start) if self.fresh(e)]

    async def end_missing(self) -> tuple[list[JobEvent], Job | None]:
        """When the job has finished but no ending event was sent: the events still unsent from the stream,
        and the job's record when the ending event is not among them (it was trimmed from the capped stream,
        or the queue writes no stream): the client gets the record instead."""
        job = await self.api.queue.get(self.job.id)
        if job is None or not job.status.finished or self.ended:
            return [], None
        events = await self.catch_up()
        return events, (None if self.ended else job)


async def job_events(request: web.Request) -> web.StreamResponse:
    api = api_of(request)
    key = await caller(request, Scope.READ)
    job = await owned_job(api, key, job_id_of(request))
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if last is not None and not _ENTRY_RE.match(last):
        raise ProblemError(400, f"Last-Event-ID: {EVENT_ID_EXAMPLE}, got {last[:40]!r}")
    follower = _Follower(api, job, last)
    sub = api.hub.attach({job.id})
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    api.metrics.streams.inc()
    try:
        await response.prepare(request)
        for event in await follower.catch_up():
            await _sse(response, event)
        await _sse_live(api, response, follower, sub)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        api.hub.unfollow(sub)
        api.metrics.streams.dec()
    return response


async def _sse(response: web.StreamResponse, event: JobEvent) -> None:
    data = json.dumps(event_json(event), separators=(",", ":"))
    await response.write(f"id: {event.id}\nevent: {event_json(event)['event']}\ndata: {data}\n\n".encode())


async def _sse_live(api: Api, response: web.StreamResponse, follower: _Follower, sub: Subscription) -> None:
    keepalive = api.settings.api.sse_keepalive_s
    check = (
        True  # after the catch-up and after each idle keep-alive period (not per event: fan-out stays cheap)
    )
    while not follower.ended:
        if check:
            missed, record = await follower.end_missing()
            for old in missed:
                await _sse(response, old)
            if record is not None:
                await response.write(f"event: end\ndata: {json.dumps(job_json(record))}\n\n".encode())
                return
            check = False
            continue
        try:
            event: JobEvent | None = await asyncio.wait_for(sub.inbox.get(), keepalive)
        except TimeoutError:
            await response.write(b": keep-alive\n\n")
            check = True
            continue
        if event is None:
            return  # fell behind: the client reconnects with Last-Event-ID and catches up from the stream
        if follower.fresh(event):
            await _sse(response, event)
    final = await api.queue.get(follower.job.id)
    if final is not None:
        await response.write(f"event: end\ndata: {json.dumps(job_json(final))}\n\n".encode())
