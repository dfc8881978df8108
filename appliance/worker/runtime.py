"""The worker process: one per GPU (bound to its ComfyUI) or per API connector slot.

    worker = Worker(settings, parse_slot("echo0"), connection=settings.redis_connection())
    exit_code = await worker.run()

Start: connect to Redis, start the connector, wait for its service, register capabilities, READY=1. Then the
claim loop (`appliance.worker.claimloop`) takes jobs while Redis answers, the service is healthy, the machine is
not drained and a slot is free; it sleeps on the queue's push wake-up, never on a polling timer. Beside it run
the batched heartbeat, the fleet-wide reaper, the service health probe, the fleet drain watch, the cancel
listener and the status publisher. SIGTERM drains (see `appliance.worker.drain`); the watchdog pings while the claim loop keeps
turning, however long Redis is away (an outage is reported in STATUS=, the process rides it out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from appliance.config import RedisConnection, Settings
from appliance.identity import WorkerSlot
from appliance.notify import Notifier, WatchdogPinger
from appliance.queue import Queue, WorkerSession
from appliance.queue.multi import open_session
from appliance.worker.claimloop import ClaimLoop
from appliance.worker.connectors import Connector, ConnectorCapabilities, create_connector
from appliance.worker.drain import FleetDrain, StopSignals, stop_tasks, wait_until
from appliance.worker.execution import JobRunner
from appliance.worker.housekeeping import HEALTH_TIMEOUT_S, Reaper, ServiceHealth
from appliance.worker.leases import Heartbeater, Lease, LeaseTable, OutcomeWriter
from appliance.worker.outcome import StopReason
from appliance.worker.redislink import RedisLink, is_unreachable
from appliance.worker.status import Phase, Snapshot, StatusPublisher
from appliance.worker.storage import OutputStorage
from appliance.worker.wiring import (
    DOWN_HEALTH_INTERVAL_S,
    build_capabilities,
    build_storage,
    connect_queue,
    machine_resources,
    worker_parts,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: After the drain grace: how long handed-back jobs may take to stop, and their hand-backs to be written (s).
DRAIN_INTERRUPT_S = 5.0
HURRY_INTERRUPT_S = 0.5
EXIT_WRITE_S = 10.0
HURRY_WRITE_S = 3.0
#: Least time between two looks of the status loop (s).
STATUS_GAP_S = 0.2


class WorkerError(Exception):
    """The worker cannot start (bad credentials, a connector that cannot be built); one line for the user."""


class Worker:
    """One worker process: a slot, its connector, its leases."""

    def __init__(
        self,
        settings: Settings,
        slot: WorkerSlot,
        *,
        connection: RedisConnection,
        concurrency: int | None = None,
        notifier: Notifier | None = None,
        env: Mapping[str, str] = os.environ,
        connector: Connector | None = None,
        storage: OutputStorage | None = None,
    ) -> None:
        self.settings = settings
        self.slot = slot
        self.connection = connection
        self.env = env
        self.machine_id = settings.machine.id
        self.worker_id = slot.worker_id(self.machine_id)
        self.parts = worker_parts(settings, slot, concurrency=concurrency, env=env)
        self.storage = storage or build_storage(settings, env)
        self.connector = connector or create_connector(
            self.parts.connector, options=self.parts.options, storage=self.storage
        )
        self.capacity = max(1, min(self.parts.concurrency, self.connector.max_concurrency))
        self.claim_timeout_s = settings.worker.claim_timeout_s
        self.notifier = notifier or Notifier(env)
        self.link = RedisLink(on_change=self._change)
        self.leases = LeaseTable(on_change=self._jobs_changed, on_free=self._change)
        self.signals = StopSignals(on_change=self._change)
        self.status = StatusPublisher(self.notifier, self.link)
        self.service = ServiceHealth(
            self.connector,
            self.parts.connector,
            interval_s=self.parts.health_interval_s,
            down_interval_s=DOWN_HEALTH_INTERVAL_S,
            on_change=self._change,
        )
        self.queue: Queue | None = None
        self.session: WorkerSession | None = None
        self.fleet: FleetDrain | None = None
        self.runner: JobRunner | None = None
        self.writer: OutcomeWriter | None = None
        self.claims: ClaimLoop | None = None
        self._phase: Phase | None = Phase.STARTING
        self._status_dirty = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []
        self._watchdog: WatchdogPinger | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped by a signal; 0 after a clean drain."""
        self.signals.install(self.env)
        try:
            if await self._start():
                await self._serve()
        finally:
            await self._close()
        return 0

    async def _start(self) -> bool:
        """Connect, start the connector, wait for its service, register; False when stopped meanwhile."""
        await self._publish()
        queue = await self._until_redis(
            lambda: connect_queue(self.connection, self.settings), "connecting to Redis"
        )
        if queue is None:
            return False
        self.queue = queue
        await self.connector.start()
        found = await self._wait_for_service()
        if found is None:
            return False
        ram_gb, cores = machine_resources()
        capabilities = build_capabilities(
            self.settings, found, slot=self.slot, ram_gb=ram_gb, cpu_cores=cores
        )
        # Leases still held under our id belong to a previous run of this slot that died: hand them back now
        # instead of letting them wait for their lease to expire (the attempt counts).
        orphans = await self._until_redis(
            lambda: queue.return_jobs_of_worker(self.worker_id, "worker_restart"), "returning orphaned jobs"
        )
        if orphans:
            log.warning("handed back %d job(s) a previous run of %s left behind", orphans, self.worker_id)
        session = await self._until_redis(
            # One WorkerSession, or a SessionSet over `worker.queues` that behaves as one.
            lambda: open_session(queue, self.worker_id, capabilities, machine_id=self.machine_id),
            "registering",
        )
        if session is None:
            return False
        self.session = self.status.session = session
        fleet = self.fleet = FleetDrain(queue.client, self.machine_id, self.link, on_change=self._change)
        await self._until_redis(fleet.check, f"reading the fleet drain flag (key {fleet.key})")
        self.writer = OutcomeWriter(queue, self.link)
        self.runner = JobRunner(
            self.connector,
            queue,
            self.leases,
            self.link,
            self.writer,
            default_timeout_s=self.parts.default_timeout_s,
            on_service_trouble=self.service.check_now,
            storage=self.storage,
        )
        self._phase = None
        self.notifier.ready(self.snapshot().text())
        log.info(
            "worker %s ready: services %s, concurrency %d, queue %s",
            self.worker_id,
            ",".join(capabilities.services),
            self.capacity,
            queue.name,
        )
        return True

    async def _until_redis(self, call: Callable[[], Awaitable[T]], what: str) -> T | None:
        """Retry `call` while Redis is unreachable (with backoff); None when a stop signal came first."""
        from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

        from appliance.rediserrors import describe_redis_error

        while not self.signals.draining.is_set():
            try:
                result = await call()
            except (AuthenticationError, AuthorizationError) as exc:
                raise WorkerError(describe_redis_error(exc)) from None
            except Exception as exc:
                if isinstance(exc, RedisError) and not is_unreachable(exc):
                    # Redis answered and refused (NOPERM, OOM, READONLY): retrying will not change that.
                    raise WorkerError(describe_redis_error(exc, doing=what)) from None
                if not is_unreachable(exc):
                    raise
                self.link.mark_down(exc)
                await self._publish()
                log.info("%s: Redis unreachable, retrying", what)
                await self._sleep_or_stop(self.link.backoff_s())
                continue
            self.link.mark_up()
            return result
        return None

    async def _wait_for_service(self) -> ConnectorCapabilities | None:
        """Wait until the service answers and reports what it offers; None when a stop signal came first."""
        while not self.signals.draining.is_set():
            if await self.service.probe():
                try:
                    found = await self.connector.capabilities()
                except Exception as exc:
                    log.warning(
                        "%s answers but its capabilities could not be read: %s", self.parts.connector, exc
                    )
                else:
                    self.service.set(True)
                    return found
            self._phase = Phase.SERVICE_DOWN
            await self._publish()
            # Keep systemd from timing the start out while the service (ComfyUI loading models) comes up.
            self.notifier.extend_timeout(DOWN_HEALTH_INTERVAL_S * 3 + HEALTH_TIMEOUT_S)
            await self._sleep_or_stop(DOWN_HEALTH_INTERVAL_S)
        return None

    async def _serve(self) -> None:
        assert self.queue is not None and self.session is not None and self.fleet is not None
        assert self.runner is not None
        heartbeat = Heartbeater(
            self.session,
            self.leases,
            self.link,
            interval_s=self.settings.queue.heartbeat_interval_ms / 1000,
            on_cancel=self._cancel_requested,
            on_lost=self._lease_lost,
        )
        q = self.settings.queue
        reaper = Reaper(
            self.queue,
            self.link,
            interval_s=q.reaper_interval_ms / 1000,
            max_sleep_s=q.reaper_max_sleep_ms / 1000,
        )
        self.queue.on_retry_scheduled = reaper.due_in
        for name, coro in (
            ("heartbeat", heartbeat.run()),
            ("reaper", reaper.run()),
            ("health", self.service.run()),
            ("fleet-drain", self.fleet.run()),
            ("status", self._status_loop()),
            ("cancels", self._cancel_listener()),
        ):
            self._background.append(asyncio.create_task(coro, name=name))
        self.claims = ClaimLoop(
            self.session,
            self.fleet,
            self.runner,
            leases=self.leases,
            link=self.link,
            signals=self.signals,
            service=self.service,
            capacity=self.capacity,
            claim_timeout_s=self.claim_timeout_s,
        )
        self._watchdog = WatchdogPinger(self.notifier, [self.claim_loop_turning])
        self._watchdog.start()
        await self.claims.run()
        await self._drain()

    # --- changes ---------------------------------------------------------------------------------------------

    def _change(self) -> None:
        """Something the claim loop or the status depends on changed: wake both."""
        self._status_dirty.set()
        if self.claims is not None:
            self.claims.wake()
        elif self.session is not None:
            self.session.wake()

    def _jobs_changed(self) -> None:
        """A lease came or went: the status shows it (a freed slot also wakes the claim loop: `_change`)."""
        self._status_dirty.set()

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.signals.draining.wait()

    # --- events from the queue --------------------------------------------------------------------------------

    def _cancel_requested(self, lease: Lease) -> None:
        if self.runner is not None and not lease.finishing:
            self.runner.stop(lease, StopReason.CANCEL)

    def _lease_lost(self, lease: Lease) -> None:
        if lease.finishing:
            # The outcome is being written: the heartbeat may have run just after our own complete/fail landed
            # (it ends the lease) and before its reply came back. The write's reply tells what happened, and
            # the writer logs it; saying "will not be written" here would be false when it was written.
            log.debug(
                "job %s: heartbeat found no lease while its outcome is being written; the write decides",
                lease.job_id,
            )
            return
        log.warning(
            "job %s: lease lost (heartbeat); stopping it, its outcome will not be written", lease.job_id
        )
        if self.runner is not None:
            self.runner.stop(lease, StopReason.LOST)

    async def _cancel_listener(self) -> None:
        assert self.session is not None
        while True:
            job_id = await self.session.cancel_requests.get()
            lease = self.leases.current(job_id)
            if lease is not None:
                self._cancel_requested(lease)

    # --- background loops -------------------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._status_dirty.wait()
            self._status_dirty.clear()
            await self._publish()
            # Every claim and completion marks the status dirty: a busy worker looks a few times a second, not
            # once per job (the drain publishes on its own, at once).
            await self._sleep_or_stop(STATUS_GAP_S)

    # --- status and watchdog ----------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        drained = self.fleet is not None and self.fleet.drained
        phase = self._phase
        if phase is None:
            if self.signals.draining.is_set():
                phase = Phase.DRAINING
            elif not self.link.up:
                phase = Phase.REDIS_DOWN
            elif not self.service.healthy:
                phase = Phase.SERVICE_DOWN
            elif drained:
                phase = Phase.DRAINED
            else:
                phase = Phase.RUNNING if len(self.leases) else Phase.IDLE
        elif phase is Phase.STARTING and not self.link.up:
            phase = Phase.REDIS_DOWN
        return Snapshot(
            phase=phase,
            connector=self.parts.connector,
            slot=self.slot.name,
            concurrency=self.capacity,
            service_healthy=self.service.healthy,
            drained=drained,
            redis_ok=self.link.up,
            jobs=[lease.snapshot() for lease in self.leases.all()],
            done=self.runner.completed if self.runner else 0,
            failed=self.runner.failed if self.runner else 0,
        )

    async def _publish(self, force: bool = False) -> None:
        await self.status.publish(self.snapshot(), force=force)

    async def claim_loop_turning(self) -> bool:
        """Watchdog check: the claim loop (or the drain) turned recently."""
        return self.claims is not None and self.claims.turning()

    # --- stopping ---------------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """No new claims; running jobs get the drain grace, then go back to the queue (attempt not counted)."""
        assert self.runner is not None and self.writer is not None and self.claims is not None
        self._phase = Phase.DRAINING
        self.notifier.stopping(self.snapshot().text())
        await self._publish(force=True)
        grace = self.settings.worker.drain_grace_s
        running = self.leases.running()
        if running:
            log.warning(
                "draining: %d job(s) may finish within %gs, else they go back to the queue",
                len(running),
                grace,
            )
        self.claims.touch()
        finished = await wait_until(
            lambda: not self.leases.running(), timeout_s=grace, wake=self.signals.hurry
        )
        self.claims.touch()
        if not finished:
            hurry = self.signals.hurry.is_set()
            self.runner.interrupt_grace_s = HURRY_INTERRUPT_S if hurry else DRAIN_INTERRUPT_S
            for lease in self.leases.running():
                log.warning(
                    "job %s: handing it back (%s)",
                    lease.job_id,
                    "second signal" if hurry else f"drain grace of {grace:g}s over",
                )
                self.runner.stop(lease, StopReason.HANDBACK)
        await self._publish()
        limit = HURRY_WRITE_S if self.signals.hurry.is_set() else EXIT_WRITE_S
        if not await wait_until(lambda: len(self.leases) == 0, timeout_s=limit):
            log.error(
                "exiting with %d job outcome(s) unwritten (Redis unreachable?); their leases will expire",
                len(self.leases),
            )
        self.writer.abandon.set()

    async def _close(self) -> None:
        if self._phase is not Phase.DRAINING:
            self.notifier.stopping("stopping")
        log.debug("closing: stopping tasks")
        if self._watchdog is not None:
            await self._watchdog.stop()
        runs = self.claims.runs.values() if self.claims is not None else ()
        interrupters = self.runner.interrupters if self.runner is not None else set()
        retries = self.writer.retries if self.writer is not None else set()
        await stop_tasks([*runs, *interrupters, *retries, *self._background])
        log.debug("closing: session")
        if self.session is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self.session.close(deregister=True)
        log.debug("closing: connector")
        for close in (self.connector.close, self.storage.close):
            try:
                await close()
            except Exception:
                log.exception("closing %s failed", getattr(close, "__qualname__", close))
        if self.queue is not None:
            with contextlib.suppress(Exception):
                await self.queue.close()
        done = self.runner.completed if self.runner else 0
        failed = self.runner.failed if self.runner else 0
        summary = f"stopped: {done} job{'s' if done != 1 else ''} done, {failed} failed"
        # systemd keeps a stopped unit's last STATUS=: let it be this, not "draining".
        self.notifier.status(summary)
        self.notifier.close()
        self.signals.uninstall()
        log.info("worker %s %s", self.worker_id, summary)
