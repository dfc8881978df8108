"""The loops beside the claim loop that watch the backing service and keep the queue tidy.

`ServiceHealth` probes the connector's service (ComfyUI, an API): while it does not answer the worker claims
nothing and says so; a failed job that smells of an outage triggers a probe at once. `reap_forever` offers to
run the queue's reaper every interval; the script's lock lets one worker of the fleet through per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
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


async def reap_forever(queue: Queue, link: RedisLink, interval_s: float) -> None:
    """Offer to reap every interval (jittered, so workers do not arrive together); skip while Redis is away."""
    while True:
        await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))
        if not link.up:
            continue
        try:
            result = await queue.reap()
        except Exception as exc:
            if is_unreachable(exc):
                link.mark_down(exc)
            else:
                log.exception("reaping failed")
            continue
        if result.requeued or result.dead or result.cancelled:
            log.info(
                "reaper: %d expired or due job(s) back in line, %d dead-lettered, %d cancelled",
                result.requeued,
                result.dead,
                result.cancelled,
            )
