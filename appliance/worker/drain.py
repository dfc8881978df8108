"""When a worker stops taking jobs: on a signal (systemd stopping it) and while its machine is drained.

Signals: the first SIGTERM or SIGINT starts a graceful drain (no new claims; running jobs get the drain grace,
then go back to the queue without counting the attempt); a second one hands everything back at once.

Fleet drain: `appliance fleet drain MACHINE` sets `machine:<id>:drain`; the worker keeps running and healthy
but claims nothing until the key is gone. One EXISTS every few seconds and before a claim is all it costs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from appliance.notify import hang_event_loop
from appliance.queue.registry import drain_key
from appliance.worker.redislink import RedisLink, is_unreachable

log = logging.getLogger(__name__)

#: How often the fleet drain flag is read in the background (s), and how old a reading may be at a claim.
FLEET_CHECK_INTERVAL_S = 3.0
FLEET_CHECK_MAX_AGE_S = 1.0


class StopSignals:
    """SIGTERM/SIGINT handling: `draining` after the first, `hurry` after the second."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.draining = asyncio.Event()
        self.hurry = asyncio.Event()
        self.received = 0
        self._on_change = on_change
        self._installed: list[signal.Signals] = []

    def install(self, env: Mapping[str, str] = os.environ) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.deliver, sig)
            self._installed.append(sig)
        if env.get("APPLIANCE_TEST_HOOKS") == "1":
            # Test hook for the watchdog tests: SIGUSR2 blocks the event loop for good, like a hung worker.
            loop.add_signal_handler(signal.SIGUSR2, hang_event_loop)
            self._installed.append(signal.SIGUSR2)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def deliver(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.received += 1
        if self.received == 1:
            log.warning(
                "%s: draining (no new jobs; running jobs may finish within the drain grace)", sig.name
            )
            self.draining.set()
        else:
            log.warning("%s again: handing running jobs back now", sig.name)
            self.draining.set()
            self.hurry.set()
        self._on_change()


class FleetDrain:
    """Reads the machine's drain flag; `drained` is the last answer (False until one came)."""

    def __init__(
        self, client: Any, machine_id: str, link: RedisLink, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.client = client
        self.machine_id = machine_id
        self.key = drain_key(machine_id)
        self.link = link
        self.drained = False
        self._checked_at = float("-inf")
        self._on_change = on_change

    async def check(self, max_age_s: float = 0.0) -> bool:
        """The flag, read again when the last reading is older than `max_age_s`; Redis errors keep the old one."""
        if time.monotonic() - self._checked_at < max_age_s:
            return self.drained
        try:
            drained = bool(await self.client.exists(self.key))
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self.link.mark_down(exc)
            return self.drained
        self._checked_at = time.monotonic()
        if drained != self.drained:
            log.warning(
                "machine %s: taking no new jobs (fleet drain)"
                if drained
                else "machine %s: drain lifted, taking jobs again",
                self.machine_id,
            )
            self.drained = drained
            self._on_change()
        return drained

    async def run(self, interval_s: float = FLEET_CHECK_INTERVAL_S) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("reading the fleet drain flag failed")
            await asyncio.sleep(interval_s)


async def wait_until(
    condition: Callable[[], bool], *, timeout_s: float, wake: asyncio.Event | None = None, poll_s: float = 0.1
) -> bool:
    """Wait until `condition()` holds (True), `wake` is set or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0 or (wake is not None and wake.is_set()):
            return False
        await asyncio.sleep(min(poll_s, left))
    return True


async def stop_tasks(tasks: list[asyncio.Task[Any]], timeout_s: float = 5.0) -> None:
    """Cancel tasks and wait for them, cancelling again while they linger: a cancellation that lands on
    an expiring timeout, or in code that suppresses it, must not keep the process from exiting."""
    deadline = time.monotonic() + timeout_s
    while pending := [t for t in tasks if not t.done()]:
        if time.monotonic() > deadline:
            for task in pending:
                log.error("task %s did not stop; exiting without it", task.get_name())
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.2)
