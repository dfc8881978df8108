"""The claim loop: take jobs while this worker may, else sleep until something changes.

    claims = ClaimLoop(session, fleet, runner, leases=..., link=..., signals=..., service=..., capacity=2,
                       claim_timeout_s=5)
    await claims.run()                 # returns once a stop signal came

A turn claims every free slot in one call while Redis answers, the service is healthy, the machine is not drained
and a slot is free; otherwise it sleeps on the queue's push wake-up or on a change of state (`wake`), never on a
polling timer. Each claimed job runs as its own task (`JobRunner.run`), which leaves `runs` when it ends. The
time of the last turn (`beat`) is what the watchdog checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Coroutine
from typing import Any

from appliance.queue import WorkerSession
from appliance.queue.jobbody import Claim
from appliance.worker.drain import FLEET_CHECK_MAX_AGE_S, FleetDrain, StopSignals
from appliance.worker.execution import JobRunner
from appliance.worker.housekeeping import ServiceHealth
from appliance.worker.leases import Lease, LeaseTable
from appliance.worker.redislink import RedisLink, is_unreachable

log = logging.getLogger(__name__)


class ClaimLoop:
    """Claims jobs for one worker and starts their runs; `runs` holds the run tasks not yet collected."""

    def __init__(
        self,
        session: WorkerSession,
        fleet: FleetDrain,
        runner: JobRunner,
        *,
        leases: LeaseTable,
        link: RedisLink,
        signals: StopSignals,
        service: ServiceHealth,
        capacity: int,
        claim_timeout_s: float,
    ) -> None:
        self.session = session
        self.fleet = fleet
        self.runner = runner
        self.leases = leases
        self.link = link
        self.signals = signals
        self.service = service
        self.capacity = capacity
        self.claim_timeout_s = claim_timeout_s
        #: The run tasks not yet ended, by their lease's token (a run takes itself out by its token, without
        #: asking asyncio for the current task: that costs a `getpid` per job).
        self.runs: dict[str, asyncio.Task[None]] = {}
        #: Monotonic time of the loop's last turn (the watchdog's liveness check).
        self.beat = time.monotonic()
        self._changed = asyncio.Event()
        #: Ends a wait at the latest `claim_timeout_s` after it was armed (`_wait_changed`).
        self._ticker: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        """Turn until a stop signal came. Meanwhile the loop carries the completions of finished jobs with its
        claims; afterwards (the drain) they go out on their own."""
        completions = self.runner.writer.completions
        completions.carry(self.wake)
        try:
            while not self.signals.draining.is_set():
                await self.iteration()
        finally:
            completions.carry(None)
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    async def iteration(self) -> None:
        """One turn: complete the jobs that finished and claim the slots that are free in one round trip (the
        finished jobs' slots count as free: their leases end first, so nothing is leased beyond the slots);
        when this worker may not claim, send the completions alone; with nothing to do, sleep until something
        changes (or a timeout)."""
        self.touch()
        self._changed.clear()
        completions = self.runner.writer.completions
        batch = completions.take()
        try:
            free = self.capacity - len(self.leases) + len(batch)
            if self.blocked() is not None or free < 1 or await self.fleet.check(FLEET_CHECK_MAX_AGE_S):
                if batch:
                    await completions.send(batch)
                else:
                    await self._wait_changed(self.claim_timeout_s)
                return
            codes, claimed = await self.session.finish_and_lease([o for o, _ in batch], free)
        except asyncio.CancelledError:
            completions.put_back(batch)  # the worker exits: they go out on their own (a repeat is refused)
            raise
        except Exception as exc:
            completions.resolve(batch, exc)  # each writer retries (Redis away) or reports it
            if not is_unreachable(exc):
                log.exception("claiming failed")
                await self._sleep_or_stop(self.link.backoff_s())
            else:
                self.link.mark_down(exc)
            return
        # The batch's leases end and the claimed ones start as one change of the lease table (one wake-up of
        # this loop, which is running anyway, and of the status), not one per job.
        leases = self.leases
        leases.hold()
        try:
            completions.resolve(batch, codes)
            if claimed:
                loop = asyncio.get_running_loop()  # once per batch (each call also asks the OS for the pid)
                for one in claimed:
                    self._start_run(loop, one)
        finally:
            leases.release()
        self.link.mark_up()
        if not claimed and not batch and not completions.waiting() and not self._changed.is_set():
            # A completion queued during this turn's awaits (the drain flag's read) woke the session before
            # finish_and_claim cleared its wake-up: it goes in the next turn, not after a wait for work. So does
            # any other wake-up of this turn (`wake`: a stop signal, a freed slot, the service's health).
            await self.session.wait_for_work(self.claim_timeout_s)

    def blocked(self) -> str | None:
        """Why the worker may not claim now, or None."""
        if self.signals.draining.is_set():
            return "draining"
        if not self.link.up:
            return "redis down"
        if not self.service.healthy:
            return "service down"
        if self.fleet.drained:
            return "drained"
        return None

    def wake(self) -> None:
        """Something a turn depends on changed: end the current wait."""
        self._changed.set()
        self.session.wake()

    def touch(self) -> None:
        """The loop (or the drain that follows it) is alive."""
        self.beat = time.monotonic()

    def turning(self) -> bool:
        """Whether the loop turned recently."""
        return time.monotonic() - self.beat < 3 * self.claim_timeout_s + 30

    def _start_run(self, loop: asyncio.AbstractEventLoop, claimed: Claim) -> None:
        lease = self.runner.lease_for(claimed)
        # No wake when it ends: its lease leaving the table wakes the loop (LeaseTable's on_free).
        task = start_task(loop, self._run(lease, loop), f"run:{lease.job_id}")
        if not task.done():  # started eagerly, a run that ended in its first step has left `runs` already
            self.runs[lease.token] = task

    async def _run(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> None:
        """One job's run; its task leaves `runs` when it ends (no scan of the runs per turn), and a crash (a
        bug, not a job failure) is logged."""
        try:
            await self.runner.run(lease, loop)
        except Exception:
            log.exception("a job run crashed")
        finally:
            self.runs.pop(lease.token, None)

    async def _wait_changed(self, timeout_s: float) -> None:
        """Sleep until something changes, `timeout_s` at most. One timer serves the waits in a row: at one slot
        every job passes through here, and a timer armed and cancelled per wait cost more than the wait. A wait
        it ends early is a turn that finds nothing new (the loop looks again and waits again)."""
        changed = self._changed
        if changed.is_set():
            return
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(timeout_s, self._tick)
        await changed.wait()

    def _tick(self) -> None:
        self._ticker = None
        self._changed.set()

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.signals.draining.wait()


if sys.version_info >= (3, 12):

    def start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        """A task of `loop` running `coro`, its first step run now (eagerly): a no-op job ends in it without
        being scheduled (a loop turn and a handle fewer per job). Its name given to the Task itself."""
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)

else:

    def start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        """A task of `loop` running `coro` (Python 3.11: scheduled; the loop's create_task takes the name itself,
        asyncio's wrapper sets it in a second call)."""
        return loop.create_task(coro, name=name)
