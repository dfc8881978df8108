"""Live job events for many clients from one reader: the hub tails the queue's event stream once per process
and hands each entry to the subscribers of its job, so 1,000 open SSE streams cost one XREAD, not 1,000.

A subscriber first attaches (events buffer from then on), then reads what it missed from the stream by range
(`catch_up`), then drains its buffer skipping ids it already sent: no gap and no duplicate between the two. A
subscriber that falls too far behind is closed; its client reconnects with Last-Event-ID and catches up from
the stream, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from appliance.queue import Queue
from appliance.queue.events import JobEvent

log = logging.getLogger(__name__)

#: Events one subscriber may have waiting before it is cut off (and resumes from the stream).
BUFFER = 1000
#: Entries read per range call while catching up.
CATCH_UP_BATCH = 1000


class Subscription:
    """One client's view: the jobs it follows and the events waiting for it (None: cut off, reconnect)."""

    def __init__(self, jobs: set[str]) -> None:
        self.jobs = jobs
        self.inbox: asyncio.Queue[JobEvent | None] = asyncio.Queue(BUFFER + 1)
        self.lagged = False

    def cut(self) -> None:
        """End this subscriber's stream (the process stops, or it fell behind): its client resumes elsewhere."""
        self.lagged = True
        with contextlib.suppress(asyncio.QueueFull):
            self.inbox.put_nowait(None)

    def offer(self, event: JobEvent) -> None:
        if self.lagged:
            return
        if self.inbox.qsize() >= BUFFER:
            self.cut()
            return
        self.inbox.put_nowait(event)


class EventHub:
    def __init__(self, queue: Queue, block_ms: int = 2000) -> None:
        self.queue = queue
        self.block_ms = block_ms
        self._by_job: dict[str, set[Subscription]] = defaultdict(set)
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        #: Set when a subscriber attaches (the reader waits for one while there is none).
        self._wanted = asyncio.Event()
        #: Events read from the stream (for the benchmark and tests).
        self.read = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-event-hub")

    async def stop(self) -> None:
        """Stop reading and end every open stream (so the server's shutdown does not wait for them)."""
        for sub in tuple(self._subs):
            sub.cut()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _idle(self, since: str) -> str:
        """With no subscriber, read nothing (each API process would parse every event of the queue): keep the
        id where the stream ends, refreshed each block period, and wait for a first subscriber. Reading then
        resumes after that id, so no event since the subscriber attached is missed; its own catch-up covers
        the time before. An id fetched while a subscriber attached may lie past its attachment: not used."""
        self._wanted.clear()
        newest, _ = await self.queue.events.tail("$", block_ms=None, count=1)
        if self._wanted.is_set():
            return since
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wanted.wait(), self.block_ms / 1000)
        return newest

    def attach(self, jobs: set[str]) -> Subscription:
        sub = Subscription(set())
        self._subs.add(sub)
        self._wanted.set()
        self.follow(sub, jobs)
        return sub

    def follow(self, sub: Subscription, jobs: set[str]) -> None:
        for job in jobs:
            sub.jobs.add(job)
            self._by_job[job].add(sub)

    def unfollow(self, sub: Subscription, jobs: set[str] | None = None) -> None:
        """Stop sending `jobs` (None: every job, and the subscriber is gone) to `sub`."""
        if jobs is None:
            self._subs.discard(sub)
        for job in list(sub.jobs if jobs is None else jobs):
            sub.jobs.discard(job)
            subs = self._by_job.get(job)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_job[job]

    async def catch_up(self, job: str, start: str) -> AsyncIterator[JobEvent]:
        """The job's events in the stream from `start` (an XRANGE bound: `(<id>` excludes it), oldest first."""
        following: str | None = start
        while following is not None:
            events, following = await self.queue.events.after(following, CATCH_UP_BATCH)
            for event in events:
                if event.job == job:
                    yield event

    async def _run(self) -> None:
        since = "$"
        while True:
            try:
                if not self._subs:
                    since = await self._idle(since)
                    continue
                since, events = await self.queue.events.tail(since, block_ms=self.block_ms, count=1000)
            except (RedisError, OSError) as exc:
                log.warning("event hub: reading the event stream failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1)
                continue
            self.read += len(events)
            for event in events:
                for sub in tuple(self._by_job.get(event.job, ())):
                    sub.offer(event)
