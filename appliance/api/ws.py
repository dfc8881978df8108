"""`/v1/ws`: one WebSocket following many jobs. The client sends `{"follow": ["<id>", ...]}` (optionally
`"last_event_id": {"<id>": "<event id>"}` to resume) and `{"unfollow": [...]}`; the server sends
`{"type": "event", ...}` per lifecycle event, `{"type": "end", "job": {...}}` when a job has finished, and
`{"type": "error", "status": 404|400, "detail": ...}` for a job the key may not see or a message it cannot read.
Each followed job's events come in order and once: its catch-up is sent before any of its live events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

from aiohttp import WSMsgType, web

from appliance.api.context import Api, api_of, caller, job_json, owned_job
from appliance.api.keys import ApiKey, Scope
from appliance.api.live import _ENTRY_RE, EVENT_ID_EXAMPLE, _Follower, event_json
from appliance.api.problems import ProblemError
from appliance.queue.models import ID_PATTERN

_ID_RE = re.compile(ID_PATTERN)
#: Most jobs one WebSocket may follow at once.
MAX_FOLLOWED = 1000


class _Session:
    def __init__(self, api: Api, key: ApiKey, ws: web.WebSocketResponse) -> None:
        self.api, self.key, self.ws = api, key, ws
        self.sub = api.hub.attach(set())
        self.followers: dict[str, _Follower] = {}

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message, separators=(",", ":")))

    async def command(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            await self.send({"type": "error", "status": 400, "detail": "messages are JSON objects"})
            return
        if not isinstance(message, dict):
            await self.send({"type": "error", "status": 400, "detail": "messages are JSON objects"})
            return
        named = message.get("last_event_id")
        resume: dict[str, Any] = named if isinstance(named, dict) else {}
        for job_id in _ids(message.get("unfollow")):
            self.api.hub.unfollow(self.sub, {job_id})
            self.followers.pop(job_id, None)
        for job_id in _ids(message.get("follow")):
            await self.follow(job_id, resume.get(job_id))

    async def follow(self, job_id: str, last: Any) -> None:
        if len(self.followers) >= MAX_FOLLOWED:
            await self.send(
                {
                    "type": "error",
                    "status": 400,
                    "job": job_id,
                    "detail": f"at most {MAX_FOLLOWED} jobs per socket",
                }
            )
            return
        if last is not None and not (isinstance(last, str) and _ENTRY_RE.match(last)):
            await self.send(
                {
                    "type": "error",
                    "status": 400,
                    "job": job_id,
                    "detail": f"last_event_id: {EVENT_ID_EXAMPLE}",
                }
            )
            return
        try:
            if not _ID_RE.match(job_id):
                raise ProblemError(404, "")
            job = await owned_job(self.api, self.key, job_id)
        except ProblemError:
            await self.send({"type": "error", "status": 404, "job": job_id[:140], "detail": "job not found"})
            return
        follower = _Follower(self.api, job, last)
        self.followers[job_id] = follower
        self.api.hub.follow(self.sub, {job_id})
        for event in await follower.catch_up():
            await self.send({"type": "event", **event_json(event)})
        events, record = await follower.end_missing()
        for event in events:
            await self.send({"type": "event", **event_json(event)})
        if follower.ended or record is not None:
            await self.end(job_id, record)

    async def end(self, job_id: str, record: Any = None) -> None:
        self.api.hub.unfollow(self.sub, {job_id})
        self.followers.pop(job_id, None)
        final = record or await self.api.queue.get(job_id)
        if final is not None:
            await self.send({"type": "end", "job": job_json(final)})

    async def live(self, event: Any) -> bool:
        """Send one event from the hub; False when the socket fell behind (the client resumes)."""
        if event is None:
            await self.send(
                {
                    "type": "error",
                    "status": 503,
                    "detail": "fell behind; reconnect and resume with last_event_id",
                }
            )
            return False
        follower = self.followers.get(event.job)
        if follower is not None and follower.fresh(event):
            await self.send({"type": "event", **event_json(event)})
            if follower.ended:
                await self.end(event.job)
        return True


def _ids(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int)][:MAX_FOLLOWED]
    return []


async def websocket(request: web.Request) -> web.StreamResponse:
    api = api_of(request)
    key = await caller(request, Scope.READ)
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    session = _Session(api, key, ws)
    api.metrics.streams.inc()
    reader = asyncio.create_task(ws.receive())
    hub = asyncio.create_task(session.sub.inbox.get())
    try:
        while True:
            done, _ = await asyncio.wait({reader, hub}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                msg = reader.result()
                if msg.type != WSMsgType.TEXT:
                    break
                await session.command(msg.data)
                reader = asyncio.create_task(ws.receive())
            if hub in done:
                if not await session.live(hub.result()):
                    break
                hub = asyncio.create_task(session.sub.inbox.get())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        for task in (reader, hub):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        api.hub.unfollow(session.sub)
        api.metrics.streams.dec()
        await ws.close()
    return ws
