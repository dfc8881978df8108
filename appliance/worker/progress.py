"""Forwarding a job's progress to the queue without slowing the connector or flooding Redis.

The connector's callback only records the latest value and returns at once; one pump task per job writes it,
at most every `min_interval_s`, skipping changes under `min_step` percent unless the message changed. Values
in between are coalesced, never queued, so the last one always goes out. A Redis outage leaves the latest
value pending until Redis answers; the connector never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from appliance.queue.errors import QueueError
from appliance.worker.redislink import RedisLink, is_unreachable

log = logging.getLogger(__name__)

#: Default throttle: at most 4 writes a second, and only for a change of at least one percent point.
MIN_INTERVAL_S = 0.25
MIN_STEP = 1.0

#: Writes one value; returns True when the job's cancellation was requested. Raises LeaseLost when not ours.
ProgressWriter = Callable[[float, str | None], Awaitable[bool]]


@dataclass
class ProgressValue:
    percent: float
    message: str | None


class ProgressForwarder:
    """Throttled, coalescing progress of one job."""

    def __init__(
        self,
        write: ProgressWriter,
        link: RedisLink,
        *,
        on_cancel: Callable[[], None],
        on_lost: Callable[[], None],
        min_interval_s: float = MIN_INTERVAL_S,
        min_step: float = MIN_STEP,
    ) -> None:
        self._write = write
        self._link = link
        self._on_cancel = on_cancel
        self._on_lost = on_lost
        self.min_interval_s = min_interval_s
        self.min_step = min_step
        #: The latest value the connector reported, and the last one written to the queue.
        self.latest: ProgressValue | None = None
        self.sent: ProgressValue | None = None
        self.writes = 0
        #: Set while a value waits for the pump; made with the pump (most short jobs report no progress).
        self._pending: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def percent(self) -> float:
        return self.latest.percent if self.latest else 0.0

    async def report(self, percent: float, message: str | None = None) -> None:
        """The connector's ProgressCallback: record and return (the pump writes)."""
        self.latest = ProgressValue(max(0.0, min(100.0, float(percent))), message)
        if self._worth_sending():
            if self._pending is None:
                self._pending = asyncio.Event()
            self._pending.set()
            if self._task is None and not self._closed:
                self._task = asyncio.create_task(self._pump(self._pending), name="progress-pump")

    def _worth_sending(self) -> bool:
        latest, sent = self.latest, self.sent
        if latest is None:
            return False
        if sent is None:
            return True
        return (
            abs(latest.percent - sent.percent) >= self.min_step
            or latest.message != sent.message
            or (latest.percent >= 100.0 > sent.percent)
        )

    async def _pump(self, pending: asyncio.Event) -> None:
        last_write = 0.0
        while not self._closed:
            await pending.wait()
            wait = self.min_interval_s - (time.monotonic() - last_write)
            if wait > 0:
                await asyncio.sleep(wait)
            pending.clear()
            if not await self._send_latest():
                pending.set()  # Redis down: keep the value pending and retry after a backoff
                await self._link.pause()
            last_write = time.monotonic()

    async def _send_latest(self) -> bool:
        """Write the latest value; False when Redis did not answer (the value stays pending)."""
        value = self.latest
        if value is None:
            return True
        try:
            cancel = await self._write(value.percent, value.message)
        except QueueError as exc:  # LeaseLost / JobNotFound / JobAlreadyFinished: the job is not ours anymore
            log.warning("progress refused, lease lost? (%s); stopping the job", exc)
            self._closed = True
            self._on_lost()
            return True
        except Exception as exc:
            if not is_unreachable(exc):
                log.exception("writing progress failed; dropping this value")
                self.sent = value
                return True
            self._link.mark_down(exc)
            return False
        self._link.mark_up()
        self.sent = value
        self.writes += 1
        if cancel:
            self._on_cancel()
        return True

    @property
    def quiet(self) -> bool:
        """Nothing was ever reported and no pump runs: flush and close have nothing to do."""
        return self.latest is None and self._task is None

    async def flush(self, timeout_s: float = 1.0) -> None:
        """Stop the pump; write the last value if it is not out yet and Redis answers within `timeout_s`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.latest is not None and self.latest != self.sent and self._link.up:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout_s):
                    await self._send_latest()

    def close_now(self) -> None:
        """Close a quiet forwarder (no pump to wait for): later reports start nothing."""
        self._closed = True

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
