"""The claim loop: take jobs while this worker may, else sleep until something changes.

    claims = ClaimLoop(session, fleet, runner, leases=..., link=..., signals=..., service=..., capacity=2,
                       claim_timeout_s=5)
    await claims.run()                 # returns once a stop signal came

A turn claims every free slot in one call while Redis answers, the service is healthy, the machine is not drained
and a slot is free; otherwise it sleeps on the queue's push wake-up or on a change of state (`wake`), never on a
polling timer. Each claimed job runs as its own task (`JobRunner.run`), which leaves `runs` when it ends. The
time of the last turn (`beat`) is what the watchdog checks.

Two round trips in flight, while busy. A worker with one call in flight has nothing to run while the reply is
pending (a short job ends in the loop turn that starts it), so on a busy worker up to half of its cores' time went
to waiting. While the last reply filled every slot it asked for and jobs still wait (`_busy`), a worker of two or
more slots asks for at most half of them per call (`share`) and sends the next call while one is in Redis, so
one reply's jobs run while the other call is served. No job is leased beyond a free slot: a call asks for
`capacity - leases + its own completions - reserved`, where `reserved` counts, for each call in flight, the slots
it asks for beyond the leases it ends (its completions). That bound holds in whatever order Redis runs the calls
in flight (each goes on its own connection): a call's completions are never counted as freeing a slot for
another call. A reply that fills less than it asked for (the queue runs dry), an error, or a worker that may not
claim ends the overlap: the calls in flight are awaited and the loop goes back to one call at a time, so
registering as idle, wake-ups and the drain see one call at a time as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from appliance.queue import ClaimedJob, WorkerSession
from appliance.worker.completions import Pending
from appliance.worker.drain import FLEET_CHECK_MAX_AGE_S, FleetDrain, StopSignals
from appliance.worker.execution import JobRunner
from appliance.worker.housekeeping import ServiceHealth
from appliance.worker.leases import Lease, LeaseTable
from appliance.worker.redislink import RedisLink, is_unreachable

log = logging.getLogger(__name__)

#: Most claim round trips one worker keeps in flight (while busy; otherwise one).
MAX_IN_FLIGHT = 2


class _Call:
    """A claim round trip in flight: the completions it carries, the slots it asked for, its task."""

    __slots__ = ("batch", "requested", "task")

    def __init__(self, batch: list[Pending], requested: int) -> None:
        self.batch = batch
        self.requested = requested
        self.task: asyncio.Task[None] | None = None

    @property
    def reserved(self) -> int:
        """Slots this call may lease beyond those its completions end, whenever Redis runs it."""
        return max(0, self.requested - len(self.batch))


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
        self.runs: set[asyncio.Task[None]] = set()
        #: Monotonic time of the loop's last turn (the watchdog's liveness check).
        self.beat = time.monotonic()
        self._changed = asyncio.Event()
        #: Ends a wait at the latest `claim_timeout_s` after it was armed (`_wait_changed`).
        self._ticker: asyncio.TimerHandle | None = None
        #: Slots one call asks for while busy: half, so a second call can serve the other half meanwhile.
        self.share = (capacity + 1) // 2
        #: The claim round trips in flight (sent as tasks while busy; at most MAX_IN_FLIGHT).
        self._calls: list[_Call] = []
        #: The last reply leased every slot it asked for and jobs still wait: the next call may overlap.
        self._busy = False
        #: A call in flight failed with this (not a lost connection): the loop backs off before the next.
        self._failed: Exception | None = None

    async def run(self) -> None:
        """Turn until a stop signal came. Meanwhile the loop carries the completions of finished jobs with its
        claims; afterwards (the drain) they go out on their own."""
        completions = self.runner.writer.completions
        completions.carry(self.wake)
        try:
            while not self.signals.draining.is_set():
                await self.iteration()
            # Calls still in flight carry completions and may lease jobs: their replies settle both (their
            # jobs start and the drain sees them) before the completions go out on their own.
            while self._calls:
                await asyncio.wait([c.task for c in self._calls if c.task is not None])
        finally:
            for call in self._calls:  # cancelled: each puts its completions back (they go out on their own)
                if call.task is not None:
                    call.task.cancel()
            completions.carry(None)
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    async def iteration(self) -> None:
        """One turn: complete the jobs that finished and claim the slots that are free in one round trip (the
        finished jobs' slots count as free: their leases end first, so nothing is leased beyond the slots);
        when this worker may not claim, send the completions alone; with nothing to do, sleep until something
        changes (or a timeout). While busy, the call goes as a task and the next turn may send a second one
        (module doc)."""
        self.touch()
        self._changed.clear()
        if self._calls and not self._may_overlap():
            await self._wait_changed(self.claim_timeout_s)  # a call's end wakes it
            return
        if self._failed is not None and not self._calls:
            self._failed = None
            await self._sleep_or_stop(self.link.backoff_s())
            return
        completions = self.runner.writer.completions
        batch = completions.take()
        try:
            free = self.capacity - len(self.leases) + len(batch) - sum(c.reserved for c in self._calls)
            if self.blocked() is not None or free < 1 or await self.fleet.check(FLEET_CHECK_MAX_AGE_S):
                if self._calls:  # the reply in flight wakes the loop; they ride with the next call
                    completions.put_back(batch)
                    await self._wait_changed(self.claim_timeout_s)
                elif batch:
                    await completions.send(batch)
                else:
                    await self._wait_changed(self.claim_timeout_s)
                return
            if self._busy:
                self._send(batch, min(free, self.share))
                return
            codes, claimed = await self.session.finish_and_claim([o for o, _ in batch], free)
        except asyncio.CancelledError:
            completions.put_back(batch)  # the worker exits: they go out on their own (a repeat is refused)
            raise
        except Exception as exc:
            self._call_failed(batch, exc)
            if not is_unreachable(exc):
                await self._sleep_or_stop(self.link.backoff_s())
            return
        self._answered(batch, codes, claimed, free)
        if not claimed and not batch:
            await self.session.wait_for_work(self.claim_timeout_s)

    def _may_overlap(self) -> bool:
        """Whether a turn may send another call while calls are in flight."""
        return self._busy and len(self._calls) < MAX_IN_FLIGHT and self._failed is None

    def _send(self, batch: list[Pending], count: int) -> None:
        """Send a round trip as a task (busy: the loop goes on and may send a second one meanwhile)."""
        call = _Call(batch, count)
        self._calls.append(call)
        loop = asyncio.get_running_loop()
        call.task = loop.create_task(self._round_trip(call), name="claim")

    async def _round_trip(self, call: _Call) -> None:
        completions = self.runner.writer.completions
        try:
            codes, claimed = await self.session.finish_and_claim([o for o, _ in call.batch], call.requested)
        except asyncio.CancelledError:
            completions.put_back(call.batch)
            raise
        except Exception as exc:
            self._call_failed(call.batch, exc)
            if not is_unreachable(exc):
                self._failed = exc
        else:
            self._answered(call.batch, codes, claimed, call.requested)
        finally:
            self._calls.remove(call)
            self._changed.set()

    def _answered(
        self, batch: list[Pending], codes: list[int], claimed: list[ClaimedJob], asked: int
    ) -> None:
        """A round trip's reply: settle its completions and start its jobs. Busy while a reply fills every slot
        it asked for and the queue says more wait (a shorter one: back to one call at a time)."""
        self.runner.writer.completions.resolve(batch, codes)
        self.link.mark_up()
        self._busy = self.share < self.capacity and len(claimed) >= asked > 0 and self.session.jobs_wait()
        for one in claimed:
            self._start_run(one)

    def _call_failed(self, batch: list[Pending], exc: Exception) -> None:
        self._busy = False
        self.runner.writer.completions.resolve(batch, exc)  # each writer retries (Redis away) or reports it
        if not is_unreachable(exc):
            log.exception("claiming failed", exc_info=exc)
        else:
            self.link.mark_down(exc)

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

    def _start_run(self, claimed: ClaimedJob) -> None:
        lease = self.runner.lease_for(claimed)
        # No wake when it ends: its lease leaving the table wakes the loop (LeaseTable's on_free).
        loop = asyncio.get_running_loop()  # its create_task takes the name itself (asyncio's sets it after)
        self.runs.add(loop.create_task(self._run(lease), name=f"run:{lease.job_id}"))

    async def _run(self, lease: Lease) -> None:
        """One job's run; its task leaves `runs` when it ends (no scan of the runs per turn), and a crash (a
        bug, not a job failure) is logged."""
        try:
            await self.runner.run(lease)
        except Exception:
            log.exception("a job run crashed")
        finally:
            task = asyncio.current_task()
            if task is not None:
                self.runs.discard(task)

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
