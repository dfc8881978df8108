"""A process's wake hub: ONE pub/sub connection that carries the wake-ups, cancel requests and new-shape news of
every WorkerSession the process holds on a queue, and hands each to the session it is for.

How a job wakes exactly one idle worker (docs/queue.md, "Waking idle workers"): a session that runs out of work
registers as idle (idle.lua, or finish_claim.lua with its last completion) in the idle set of each shape it serves,
naming this hub's channel, in the same step that checks no job of those shapes waits. A job entering a shape's line
(submit, a retry, a release, a requeue) pops the longest-idle registration of its shape (wake_one), consumes it and
publishes `worker|shape` here. The hub sets that session's wake flag; the session claims. A session woken for a
shape that took a job of another shape (or never claimed: it stopped, or its worker is blocked) passes the wake-up
on (wake.lua), so the job it was for still gets a worker. Nothing polls: the hub re-reads the shapes and checks the
registrations it holds once every SHAPE_REFRESH_S, a safety net for a missed message.

    hub = WakeHub.of(queue)        # one per Queue object; WorkerSession.start attaches itself
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.exceptions import AskError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from appliance.queue.client import Queue
    from appliance.queue.session import WorkerSession

log = logging.getLogger(__name__)

#: How often the shape list is re-read and the idle registrations checked, in case a message was missed (s).
SHAPE_REFRESH_S = 30.0
#: A session woken for a shape that has not claimed within this long (its worker is blocked: draining, service
#: down, full) passes the wake-up on to another idle worker (s).
OWED_GRACE_S = 1.0


class WakeHub:
    """Dispatches a queue's worker messages to this process's sessions. Create with `WakeHub.of(queue)`."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.hub_id = f"{os.getpid()}-{secrets.token_hex(6)}"
        #: Where wake-ups for this process's idle workers are published (named in their registrations).
        self.channel = queue.keys.hub_channel(self.hub_id)
        self.sessions: dict[str, WorkerSession] = {}
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        #: The shapes as the last refresh read them.
        self._shapes: dict[str, str] = {}

    @classmethod
    def of(cls, queue: Queue) -> WakeHub:
        """The queue object's hub (its sessions share it), made on first use."""
        if queue.wake_hub is None:
            queue.wake_hub = cls(queue)
        hub: WakeHub = queue.wake_hub
        return hub

    # --- sessions ---------------------------------------------------------------------------------------------

    async def attach(self, session: WorkerSession) -> None:
        """Route this session's messages to it; the first session opens the connection (subscribed on return,
        so a registration naming this hub is never published to before it listens)."""
        async with self._lock:
            # A second session under one worker id (a replacement) takes its messages over.
            self.sessions[session.worker_id] = session
            if self._pubsub is None:
                self._pubsub = self.queue.client.pubsub()
                try:
                    await self._subscribe()
                except BaseException:
                    self.sessions.pop(session.worker_id, None)
                    await self._drop_pubsub()
                    raise
                self._listener = asyncio.create_task(self._listen(), name=f"wake-hub:{self.hub_id}")

    async def detach(self, session: WorkerSession) -> None:
        """Stop routing to `session` (its owed wake-ups go on to other workers); the last one closes the hub."""
        if self.sessions.get(session.worker_id) is session:
            del self.sessions[session.worker_id]
        await self.pass_on(session.take_owed())
        if not self.sessions:
            await self.close()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        await self._drop_pubsub()
        if self.queue.wake_hub is self:
            self.queue.wake_hub = None

    async def pass_on(self, shapes: Iterable[str]) -> None:
        """Wake another idle worker for each shape whose wake-up was not used (when a job of it still waits)."""
        conn = self.queue.conn
        for shape in shapes:
            try:
                await conn.run(conn.prepare("wake", [shape, conn.wake_check], shape=shape))
            except Exception as exc:  # Redis down: the reconnect wakes every session of every process
                log.warning("could not pass a wake-up for shape %s on: %s", shape, exc)

    # --- messages ---------------------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        k = self.queue.keys
        # On a Cluster the scripts SPUBLISH these (they carry the queue's hash tag): SSUBSCRIBE on its shard.
        subscribe = self._pubsub.ssubscribe if self.queue.cluster else self._pubsub.subscribe
        await subscribe(self.channel, k.shapes_channel, k.cancel_channel)

    async def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None

    async def _dispatch(self, channel: str, data: str) -> None:
        k = self.queue.keys
        if channel == self.channel:
            worker, _, shape = data.partition("|")
            session = self.sessions.get(worker)
            # Closed after registering, or not waiting for work (blocked): someone else's job now.
            if session is None or not session.woken(shape):
                await self.pass_on([shape])
        elif channel == k.cancel_channel:
            job_id, _, worker = data.partition("|")
            holder = self.sessions.get(worker)
            if holder is not None:
                holder.cancel_requests.put_nowait(job_id)
        elif channel == k.shapes_channel:
            record = await self.queue.client.hget(k.shapes, data)
            for session in list(self.sessions.values()):
                await session.consider_shape(data, record)

    async def _listen(self) -> None:
        """Turn messages into wake-ups and cancel requests; survive Redis restarts."""
        backoff = 0.1
        subscribed = True  # attach subscribed before starting us
        last_refresh = time.monotonic()
        while True:
            try:
                if not subscribed:
                    await self._resubscribe()
                    subscribed = True
                receive = self._pubsub.get_sharded_message if self.queue.cluster else self._pubsub.get_message
                message = await receive(ignore_subscribe_messages=True, timeout=1.0)
                backoff = 0.1
                if message is not None:
                    await self._dispatch(str(message["channel"]), str(message["data"]))
                now = time.monotonic()
                overdue = [
                    s for session in list(self.sessions.values()) for s in session.overdue(now - OWED_GRACE_S)
                ]
                await self.pass_on(overdue)
                if now - last_refresh > SHAPE_REFRESH_S:
                    last_refresh = now
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except (
                RedisConnectionError,
                RedisTimeoutError,
                OSError,
                RuntimeError,
                MovedError,
                AskError,
            ) as exc:
                # RuntimeError: redis-py's PubSub after a resubscription that did not get through. MOVED / ASK:
                # a Cluster moved the queue's slot (and its sharded channels) to another node: subscribe again.
                subscribed = False
                log.warning("wake-up channel lost (%s); reconnecting in %.1fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("wake hub: handling a message failed")
                await asyncio.sleep(0.1)  # never spin on a fault that repeats

    async def _resubscribe(self) -> None:
        await self._drop_pubsub()
        self._pubsub = self.queue.client.pubsub()
        await self._subscribe()
        await self.queue.scripts.load(self.queue.client)
        # Registrations may be gone (a restart without persistence) and wake-ups were lost while we were deaf:
        # every session looks now, and registers again when nothing waits.
        for session in list(self.sessions.values()):
            session.lost_registration()
        self._shapes = {}
        await self.refresh()

    async def refresh(self) -> None:
        """Re-read every shape for every session, and wake each session whose registration vanished unseen."""
        shapes = await self.queue.client.hgetall(self.queue.keys.shapes)
        if shapes != self._shapes:  # unchanged: every session already serves what it can (no matching again)
            self._shapes = shapes
            for session in list(self.sessions.values()):
                await session.refresh_shapes(shapes)
        registered = [s for s in self.sessions.values() if s.registered]
        if registered:
            held = await self.queue.client.hmget(self.queue.keys.waiting, [s.worker_id for s in registered])
            for session, channel in zip(registered, held, strict=True):
                if channel != self.channel and session.registered:
                    session.lost_registration()
