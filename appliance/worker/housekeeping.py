"""The loops beside the claim loop that watch the backing service and keep the queue tidy.

`ServiceHealth` probes the connector's service (ComfyUI, an API): while it does not answer the worker claims
nothing and says so; a failed job that smells of an outage triggers a probe at once. `Reaper` offers to
run the queue's reaper when the next lease deadline, retry or repeating job's tick falls due; the script's lock
lets one worker of the fleet through per interval, and a tick's job id lets one submission through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from appliance.queue import Queue
from appliance.worker.connectors import Connector
from appliance.worker.redislink import RedisLink, is_unreachable

log = logging.getLogger(__name__)

#: One health probe may take this long before it counts as down (s).
HEALTH_TIMEOUT_S = 10.0


class ServiceHealth:
    """Whether the connector's service answers; `on_change` is called on every transition."""

    def __init__(
        self,
        connector: Connector,
        name: str,
        *,
        interval_s: float,
        down_interval_s: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.connector = connector
        self.name = name
        self.interval_s = interval_s
        self.down_interval_s = down_interval_s
        self.healthy = False
        #: Whether it ever answered: the first answer is the start, not a recovery.
        self._answered = False
        self._on_change = on_change
        self._now = asyncio.Event()

    def check_now(self) -> None:
        """Probe at once instead of at the next interval (a job just failed in a way that hints at an outage)."""
        self._now.set()

    async def probe(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                return bool(await self.connector.health())
        except Exception as exc:  # any failure of the probe means "not answering"
            log.debug("health probe of %s failed: %s", self.name, exc)
            return False

    def set(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        if healthy and not self._answered:
            log.info("%s answers; taking jobs", self.name)
        elif healthy:
            log.warning("%s answers again; taking jobs", self.name)
        else:
            log.warning("service down: %s not answering; taking no jobs until it does", self.name)
        self.healthy = healthy
        self._answered = self._answered or healthy
        self._on_change()

    async def run(self) -> None:
        while True:
            self.set(await self.probe())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s if self.healthy else self.down_interval_s):
                    await self._now.wait()
            self._now.clear()


class Reaper:
    """Offers to run the queue's reaper when something falls due, instead of polling.

    Each pass reports how long until the next lease deadline or retry is due (by the server's clock, and not
    before the fleet-wide guard frees); the loop sleeps that long, at most `max_sleep_s`. A retry this process
    schedules wakes it earlier (`due_in`). While the fleet is quiet each worker calls about once per lease
    renewal cycle rather than once per second, and an expired lease is reaped as its deadline passes instead of
    up to a polling interval later.
    """

    def __init__(self, queue: Queue, link: RedisLink, *, interval_s: float, max_sleep_s: float) -> None:
        self.queue = queue
        self.link = link
        self.interval_s = interval_s
        self.max_sleep_s = max_sleep_s
        self._wake_at: float | None = None
        self._poke = asyncio.Event()

    def due_in(self, delay_ms: int) -> None:
        """Something falls due in `delay_ms` (a retry this process scheduled): be awake by then."""
        at = time.monotonic() + delay_ms / 1000
        if self._wake_at is None or at < self._wake_at:
            self._wake_at = at
            self._poke.set()

    async def run(self) -> None:
        while True:
            await self._sleep(await self.once())

    async def once(self) -> float:
        """One offer to reap; returns how long to sleep before the next."""
        if not self.link.up:
            return self.interval_s
        try:
            result = await self.queue.reap()
            # Repeating jobs: every worker offers, each due tick is submitted once across the fleet.
            ticks = await self.queue.schedules.materialise()
        except Exception as exc:
            if is_unreachable(exc):
                self.link.mark_down(exc)
            else:
                log.exception("reaping failed")
            return self.interval_s
        if result.requeued or result.dead or result.cancelled:
            log.info(
                "reaper: %d expired or due job(s) back in line, %d dead-lettered, %d cancelled",
                result.requeued,
                result.dead,
                result.cancelled,
            )
        if ticks.submitted:
            log.info("schedules: %d repeating job(s) submitted", ticks.submitted)
        waits = [w for w in (result.next_in_ms, ticks.next_in_ms) if w is not None]
        if not waits:
            return self.max_sleep_s
        # A few ms past the due time (this clock and the server's tick apart) and spread over the fleet, so the
        # workers do not all arrive in the same millisecond; one of them gets the guard, the others sleep again.
        return min(self.max_sleep_s, min(waits) / 1000 + random.uniform(0.005, 0.05))

    async def _sleep(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while True:
            if self._wake_at is not None and self._wake_at < until:
                until = self._wake_at
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._poke.wait()
        if self._wake_at is not None and self._wake_at <= time.monotonic():
            self._wake_at = None
