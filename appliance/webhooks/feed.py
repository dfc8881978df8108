"""The feed: the queue's event stream, read through a consumer group, turned into outbox deliveries.

Each API process is one consumer of the group `webhooks` on `appliance:{<queue>}:events`. An entry is
acknowledged (XACK) only after its deliveries are in the outbox, so a process killed in between leaves it
pending, and another process takes it over (XAUTOCLAIM) once it has been idle for `claim_idle_ms`. Queuing is
idempotent (a delivery id is queued once, and a terminal event ends the job's registration in the same script),
so an entry read twice does not send twice what it sent once.

The stream is capped (`queue.events_maxlen`): entries trimmed before any API process read them are lost to
webhooks (a warning says so at start). Keep API processes running, or the cap large enough for the longest
outage of all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from appliance.queue.events import EventKind, JobEvent
from appliance.webhooks.bodies import delivery_of
from appliance.webhooks.keys import GROUP
from appliance.webhooks.models import EventType, Registration
from appliance.webhooks.outbox import Outbox

if TYPE_CHECKING:
    from appliance.queue.client import Queue

log = logging.getLogger(__name__)

#: The webhook event of each queue event that has one.
EVENT_OF = {
    EventKind.COMPLETED: EventType.COMPLETED,
    EventKind.FAILED: EventType.FAILED,
    EventKind.DEAD: EventType.FAILED,
    EventKind.CANCELLED: EventType.CANCELLED,
    EventKind.PROGRESS: EventType.PROGRESS,
}
#: Consumers of the group idle this long with nothing pending are removed (processes that are gone).
STALE_CONSUMER_MS = 3_600_000
BATCH = 200
#: After a read that found entries but not a full batch, wait this long before the next: under load (every submit
#: writes an entry, and a webhook is sent for few of them) the next read then takes dozens of entries in one round
#: trip instead of one or two, which costs the API process and Redis a read and an XACK per entry otherwise. A
#: quiet stream is not slowed: its first entry still ends the blocking read at once.
GATHER_S = 0.02


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Feed:
    def __init__(
        self, queue: Queue, outbox: Outbox, *, max_result_bytes: int, claim_idle_ms: int, block_ms: int
    ) -> None:
        self.queue = queue
        self.outbox = outbox
        self.consumer = consumer_name()
        self.group = queue.events.group(GROUP, self.consumer)
        self.max_result_bytes = max_result_bytes
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        #: Called after deliveries were queued (the delivery loop wakes for them).
        self.on_queued: Any = None
        #: WebhookMetrics, when the service set them.
        self.metrics: Any = None
        self._last_sweep = 0.0

    async def check_retention(self) -> None:
        """Warn when the stream was trimmed past what the group has read (events lost to webhooks)."""
        trimmed = await self.group.trimmed_past()
        if trimmed is not None:
            log.warning(
                "the queue's event stream was trimmed past what webhooks had read (%s < %s): events of that "
                "time got no webhook; raise queue.events_maxlen or keep an API process running",
                *trimmed,
            )

    async def step(self) -> int:
        """Read, queue and acknowledge one batch (waiting up to block_ms for one); returns how many entries."""
        events = await self._take_over()
        if not events:
            events = await self.group.read(count=BATCH, block_ms=self.block_ms)
        if events:
            await self.handle(events)
            await self.group.ack(events)
            if len(events) < BATCH:
                await asyncio.sleep(GATHER_S)
        return len(events)

    async def _take_over(self) -> list[JobEvent]:
        """Entries another consumer read but never acknowledged (its process died), idle past claim_idle_ms;
        checked about once per claim_idle_ms."""
        now = time.monotonic()
        if now - self._last_sweep < self.claim_idle_ms / 1000:
            return []
        self._last_sweep = now
        events = await self.group.take_over(idle_ms=self.claim_idle_ms, count=BATCH)
        await self.group.drop_stale_members(STALE_CONSUMER_MS)
        return events

    async def handle(self, events: list[JobEvent]) -> None:
        relevant = [e for e in events if e.kind in EVENT_OF and e.job]
        if not relevant:
            return
        jobs = list(dict.fromkeys(e.job for e in relevant))
        found = dict(zip(jobs, await self.queue.client.hmget(self.outbox.keys.hooks, jobs), strict=True))
        queued = 0
        for event in relevant:
            raw = found.get(event.job)
            if raw is None:
                continue
            try:
                registration = Registration.model_validate_json(raw)
            except ValidationError:
                log.warning("webhook registration of job %s does not parse; dropped", event.job)
                await self.queue.client.hdel(self.outbox.keys.hooks, event.job)
                continue
            queued += await self.queue_event(registration, event)
            if EVENT_OF[event.kind] is not EventType.PROGRESS:  # type: ignore[index]
                found[event.job] = None  # its registration ended with it
        if queued and self.on_queued is not None:
            self.on_queued()

    async def queue_event(self, registration: Registration, event: JobEvent) -> int:
        kind = EVENT_OF[event.kind]  # type: ignore[index]
        terminal = kind is not EventType.PROGRESS
        if kind not in registration.events:
            if terminal:
                await self.queue.client.hdel(self.outbox.keys.hooks, event.job)
            return 0
        job = await self.queue.get(event.job)
        delivery = delivery_of(
            self.queue.name,
            registration,
            event.job,
            job,
            kind,
            at_ms=event.at_ms,
            progress_key=event.id,
            max_result_bytes=self.max_result_bytes,
        )
        queued = await self.outbox.enqueue(delivery, event.job if terminal else "")
        if queued and self.metrics is not None:
            self.metrics.queued.labels(kind.value).inc()
        return int(queued)

    async def run(self) -> None:
        """Until cancelled; a lost Redis is waited out."""
        await self.group.ensure()
        await self.check_retention()
        while True:
            await self.step()
