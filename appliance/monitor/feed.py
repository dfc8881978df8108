"""The monitor's Redis side: reads the fleet into a `MonitorState` and hands every change to `publish`.

Sources:
- pub/sub `machine:status:*` (machine status payloads) and `machine:startup:events` (lifecycle events);
- pub/sub job channels `job_submitted`, `job_claimed`, `update_job_progress`, `complete_job`, `job_failed`
  (prefixed `appliance:{<queue>}:` with `queue.channels = "queue"`; they carry ids and summaries, never results;
  a message may hold several events of one kind, decoded by the queue's `pubsub_events`);
- the queue's event stream `appliance:{<queue>}:events`, read with XREAD from the last entry seen, so nothing
  is missed across a reconnect;
- every `poll_s`: `Queue.stats()`, machine registrations (`machines`, `machine:<id>:info`), pool signals.

On connect and after every reconnect the state is reloaded from Redis (latest machine statuses, the stream
since the last entry seen) and a `full_state_snapshot` goes to every client. While Redis is unreachable the
feed retries with jittered exponential backoff and clients are told (`{"type": "redis", "ok": false}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from appliance.config import RedisConnection, Settings
from appliance.config.queue import EventsMode
from appliance.monitor.state import MonitorState, now_ms
from appliance.queue import Queue
from appliance.queue.events import EventKind, JobEvent, pubsub_events
from appliance.queue.factory import connect_queue
from appliance.queue.keys import (
    CHANNEL_CLAIMED,
    CHANNEL_COMPLETED,
    CHANNEL_FAILED,
    CHANNEL_PROGRESS,
    CHANNEL_SUBMITTED,
)
from appliance.queue.registry import STARTUP_EVENTS_CHANNEL, decode_message, status_channel
from appliance.secrets import redact_url

log = logging.getLogger(__name__)

JOB_CHANNELS = (CHANNEL_SUBMITTED, CHANNEL_CLAIMED, CHANNEL_PROGRESS, CHANNEL_COMPLETED, CHANNEL_FAILED)
STATUS_PATTERN = status_channel("*")
#: Stream entries loaded on the first connect (the recent job list and sparklines come from them).
INITIAL_ENTRIES = 2000
#: Backoff between reconnect attempts (s).
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 5.0

Publish = Callable[[dict[str, Any]], None]
#: Reads a queue's pool signals (appliance.pools.read_pool_signals, handed in by the command: the monitor knows
#: nothing of pools); the page shows the result's `to_dict()`.
PoolSignals = Callable[[Queue, Settings], Awaitable[Any]]


class Feed:
    def __init__(
        self,
        settings: Settings,
        state: MonitorState,
        publish: Publish,
        *,
        url: str,
        client_kwargs: dict[str, Any] | None = None,
        poll_s: float = 2.0,
        pools_every: int = 3,
        pool_signals: PoolSignals | None = None,
        connection: RedisConnection | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        #: Where Redis is (mode, seeds, sentinels, credentials); None: `url` with `client_kwargs`, standalone.
        self.connection = connection
        self.publish = publish
        self.url = url
        self.client_kwargs = client_kwargs or {}
        self.poll_s = poll_s
        self.pools_every = pools_every
        self.pool_signals = pool_signals
        self.queue: Queue | None = None
        self._others: list[Queue] = []
        self.stream_mode = settings.queue.events in (EventsMode.STREAM, EventsMode.STREAM_AND_PUBSUB)
        #: Jobs that ended in failure without their error text yet (stream entries do not carry it).
        self._need_error: set[str] = set()
        #: Set once the first load after a (re)connect finished; tests and /healthz wait on it.
        self.synced = asyncio.Event()
        #: Set by `stop()`. The loops check it as well as relying on cancellation: on Python 3.11 a cancel that
        #: races with redis-py's internal `asyncio.timeout` (get_message, XREAD BLOCK) can be swallowed.
        self.stopping = False

    def stop(self) -> None:
        """Make every loop end at its next turn (at most ~1 s); cancel the task running `run()` as well."""
        self.stopping = True

    # --- connection loop --------------------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self.stopping:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._set_redis(False, f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not end the monitor: log it, reconnect
                log.exception("monitor feed failed")
                self._set_redis(False, f"{type(exc).__name__}: {exc}")
            finally:
                self.synced.clear()
                if self.queue is not None:
                    with contextlib.suppress(Exception):
                        await self.queue.close()
                    self.queue = None
            if self.stopping:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if self.state.redis_ok:
                backoff = BACKOFF_MIN_S

    def _set_redis(self, ok: bool, error: str | None = None) -> None:
        if self.state.redis_ok != ok or (not ok and self.state.redis_error != error):
            if not ok:
                log.warning("Redis unreachable: %s", error)
            self.state.redis_ok, self.state.redis_error = ok, error
            self.publish({"type": "redis", "ok": ok, "error": error})

    async def _session(self) -> None:
        conn = self.connection or RedisConnection(
            self.url,
            self.client_kwargs.get("password"),
            self.client_kwargs.get("username"),
            None,
        )
        self.queue = await connect_queue(
            self.settings, queue_name=self.state.queue_name, connection=conn, socket_connect_timeout=5
        )
        pubsub = self.queue.client.pubsub()
        try:
            await pubsub.psubscribe(STATUS_PATTERN)
            job_channels = [self.queue.channel(c) for c in JOB_CHANNELS]
            sharded = (
                self.queue.conn.sharded
            )  # a Cluster's per-queue channels: SSUBSCRIBE on the queue's shard
            await pubsub.subscribe(STARTUP_EVENTS_CHANNEL, *([] if sharded else job_channels))
            if sharded:
                await pubsub.ssubscribe(*job_channels)
            await self._load()
            self.state.redis_ok, self.state.redis_error = True, None
            self.publish(self.state.snapshot())
            self.synced.set()
            log.info("monitor feed connected to %s (queue %s)", redact_url(self.url), self.state.queue_name)
            tasks = [
                asyncio.create_task(self._pubsub_loop(pubsub), name="monitor-pubsub"),
                asyncio.create_task(self._poll_loop(), name="monitor-poll"),
            ]
            if self.stream_mode:
                tasks.append(asyncio.create_task(self._stream_loop(), name="monitor-stream"))
            if sharded:
                tasks.append(asyncio.create_task(self._sharded_loop(pubsub), name="monitor-sharded"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # re-raise the failure that ended the session
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=5)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # --- (re)loading ------------------------------------------------------------------------------------------

    async def _load(self) -> None:
        assert self.queue is not None
        await self._discover_machines(load_status=True)
        if self.stream_mode:
            await self._load_stream()
        await self._poll_once(with_pools=True)

    async def _load_stream(self) -> None:
        assert self.queue is not None
        if self.state.last_stream_id == "0-0":
            events = await self.queue.events.replay(INITIAL_ENTRIES)
        else:
            _, events = await self.queue.events.tail(self.state.last_stream_id, count=INITIAL_ENTRIES * 5)
        for event in events:
            self._apply_entry(event, publish=False)

    async def _discover_machines(self, load_status: bool) -> None:
        """Registrations of every machine in `machines` and every machine we show; status of unknown ones."""
        assert self.queue is not None
        for record in await self.queue.registry.machines(also=self.state.machines):
            mid, payload = record.machine_id, record.status
            known = mid in self.state.machines
            view = self.state.set_registration(mid, record.info)
            if payload and (load_status or not known or view is None or not view.seen_ms):
                stamp = int(payload.get("timestamp") or 0)
                view = self.state.apply_machine_status(payload, min(now_ms(), stamp) if stamp else None)
            if view is not None and (not known or load_status):
                self.publish({"type": "machine_update", "machine": self.state.machine_view(view)})

    # --- live loops -------------------------------------------------------------------------------------------

    async def _pubsub_loop(self, pubsub: Any) -> None:
        while not self.stopping:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            if message.get("type") == "pmessage":
                status = decode_message(message.get("data"))
                view = self.state.apply_machine_status(status) if status is not None else None
                if view is not None:
                    self.publish({"type": "machine_update", "machine": self.state.machine_view(view)})
            elif message.get("channel") == STARTUP_EVENTS_CHANNEL:
                data = decode_message(message.get("data"))
                view = self.state.apply_machine_event(data) if data is not None else None
                if view is not None:
                    self.publish({"type": "machine_event", "event": data})
                    self.publish({"type": "machine_update", "machine": self.state.machine_view(view)})
            else:
                # A job channel: one event, or a round trip's events of one kind in one message.
                for event in pubsub_events(message.get("data")):
                    self._on_job_message(event)

    async def _sharded_loop(self, pubsub: Any) -> None:
        """Job events of a Cluster's sharded channels (SSUBSCRIBE), read apart from the classic ones."""
        while not self.stopping:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
            for event in pubsub_events(message.get("data")) if message is not None else ():
                self._on_job_message(event)

    def _on_job_message(self, data: dict[str, Any]) -> None:
        job = self.state.apply_job_event(data, details_only=self.stream_mode)
        if job is not None:
            self.publish({"type": "job_update", "job": self.state.job_view(job)})
        if not self.stream_mode and data.get("event") in ("failed", "dead", "retrying"):
            self._need_error.discard(str(data.get("job")))

    async def _stream_loop(self) -> None:
        assert self.queue is not None
        while not self.stopping:
            _, events = await self.queue.events.tail(self.state.last_stream_id, count=500, block_ms=1000)
            for event in events:
                self._apply_entry(event, publish=True)

    def _apply_entry(self, event: JobEvent, *, publish: bool) -> None:
        self.state.last_stream_id = event.entry_id
        job = self.state.apply_job_event(dict(event.fields), event.at_ms)
        if job is None:
            return
        retrying = event.kind is EventKind.RETRYING
        if job.status in ("failed", "dead") or retrying:
            if not job.error or retrying:
                self._need_error.add(job.id)
        if publish:
            self.publish({"type": "job_update", "job": self.state.job_view(job)})

    async def _poll_loop(self) -> None:
        turn = 0
        while not self.stopping:
            await asyncio.sleep(self.poll_s)
            turn += 1
            await self._poll_once(with_pools=turn % self.pools_every == 0)

    async def _poll_once(self, with_pools: bool) -> None:
        assert self.queue is not None
        stats = await self.queue.stats()
        self.state.queue_stats = stats.model_dump(mode="json")
        self.state.shape_pool = await self.queue.registry.shape_pools(self.settings.classifier.default_pool)
        for other in self._other_queues():
            self.state.other_stats[other.name] = (await other.stats()).model_dump(mode="json")
        self.publish(
            {"type": "queue_stats", "stats": self.state.queue_stats, "other_queues": self.state.other_stats}
        )
        await self._discover_machines(load_status=False)
        for mid in self.state.tick():
            view = self.state.machines.get(mid)
            if view is not None:
                self.publish({"type": "machine_update", "machine": self.state.machine_view(view)})
        await self._fill_errors()
        if with_pools and self.pool_signals is not None:
            report = await self.pool_signals(self.queue, self.settings)
            self.state.pools = report.to_dict()
            self.publish({"type": "pools", "pools": self.state.pools})

    def _other_queues(self) -> list[Queue]:
        """The fleet's other queues on this session's client (a Queue object is key names and settings; in a
        Cluster each reads its own slot), made once per connection."""
        assert self.queue is not None
        if not self._others or self._others[0].client is not self.queue.client:
            self._others = [
                Queue(
                    self.queue.client,
                    queue_name=name,
                    settings=self.queue.settings,
                    cluster=self.queue.cluster,
                )
                for name in self.state.other_queues
            ]
        return self._others

    async def _fill_errors(self) -> None:
        """Error texts of failed jobs, read from the job record (at most 50 per poll)."""
        assert self.queue is not None
        for job_id in list(self._need_error)[:50]:
            self._need_error.discard(job_id)
            job = await self.queue.get(job_id)
            if job is not None and job.error:
                view = self.state.set_job_error(job_id, job.error)
                if view is not None:
                    self.publish({"type": "job_update", "job": self.state.job_view(view)})
