"""Running one leased job through the connector: timeout, interruption, progress, and its outcome.

    runner = JobRunner(connector, queue, leases, link, writer, default_timeout_s=600)
    await runner.run(claimed)          # returns once the outcome is written (or known unwritable)

A job is interrupted for one of the reasons in `StopReason` (cancel requested, timeout, lease lost, hand-back):
`connector.cancel(job_id, token)` asks the service to stop that attempt (never another attempt of the job), the connector call gets `interrupt_grace_s` to wind down,
then its task is cancelled. The outcome follows from what the call returned or raised and why it was stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from functools import partial
from typing import Any

from appliance.queue import ClaimedJob, Job, Queue
from appliance.queue.lease import compact_json
from appliance.worker.connectors.base import Connector, ConnectorJob, ConnectorResult
from appliance.worker.leases import Lease, LeaseTable, OutcomeWriter
from appliance.worker.outcome import Outcome, OutcomeKind, StopReason, decide
from appliance.worker.progress import ProgressForwarder
from appliance.worker.redislink import RedisLink
from appliance.worker.storage import OutputStorage

log = logging.getLogger(__name__)

#: How long the connector's cancel() call itself may take (s).
CANCEL_CALL_TIMEOUT_S = 10.0
#: How long an interrupted connector call may take to wind down before its task is cancelled (s).
INTERRUPT_GRACE_S = 10.0
#: Failure codes after which the service's health is checked at once (it may be down).
SERVICE_TROUBLE_CODES = frozenset({"unreachable", "service_error", "connection", "bad_response"})


class JobRunner:
    """Runs leased jobs on one connector; one `run()` per job, several at once where the connector allows."""

    def __init__(
        self,
        connector: Connector,
        queue: Queue,
        leases: LeaseTable,
        link: RedisLink,
        writer: OutcomeWriter,
        *,
        default_timeout_s: float,
        on_service_trouble: Any = lambda: None,
        storage: OutputStorage | None = None,
    ) -> None:
        self.connector = connector
        self.queue = queue
        self.leases = leases
        self.link = link
        self.writer = writer
        self.default_timeout_s = default_timeout_s
        self.interrupt_grace_s = INTERRUPT_GRACE_S
        self._on_service_trouble = on_service_trouble
        #: Where a result too big for Redis (`queue.max_result_bytes`) goes instead.
        self.storage = storage
        self.completed = 0
        self.failed = 0

    def stop(self, lease: Lease, reason: StopReason) -> None:
        """Ask the job's run to end for `reason`; the run interrupts the connector."""
        if lease.request_stop(reason):
            log.info("job %s: stopping (%s)", lease.job_id, reason.value)

    def lease_for(self, claimed: ClaimedJob) -> Lease:
        """Enter a freshly claimed job in the lease table (at once, so capacity counts it before it runs)."""
        job = claimed.job
        lease = Lease(claimed, timeout_s=float(job.timeout_s or self.default_timeout_s))
        lease.progress = ProgressForwarder(
            partial(self._write_progress, job.id, claimed.token),
            self.link,
            on_cancel=lambda: self.stop(lease, StopReason.CANCEL),
            on_lost=lambda: self.stop(lease, StopReason.LOST),
        )
        self.leases.add(lease)
        return lease

    async def run(self, lease: Lease) -> None:
        """Run the job to its outcome and write it; the lease leaves the table when done."""
        job, claimed = lease.claimed.job, lease.claimed
        assert lease.progress is not None
        # Per job, a line only at DEBUG: at INFO a busy worker would spend more on its log than on the job
        # (and journald drops a unit's lines past its rate limit). Failures and stops are logged at INFO+.
        log.debug(
            "job %s: claimed (service %s, attempt %d, timeout %gs)",
            job.id,
            job.service,
            claimed.attempt,
            lease.timeout_s,
        )
        progress = lease.progress
        try:
            result, exc = await self._call(lease)
            lease.finishing = True
            if progress.quiet:
                progress.close_now()  # nothing reported: nothing to flush (most short jobs)
            elif lease.stop is not StopReason.LOST and exc is None:
                await progress.flush()  # the last value before the result, never after it
            else:
                await progress.close()
            outcome = decide(result, exc, lease.stop, timeout_s=lease.timeout_s)
            if outcome.kind is OutcomeKind.COMPLETE:
                outcome = await self._bounded(job.id, outcome)
            if exc is not None and outcome.kind is OutcomeKind.FAIL:
                log.warning("job %s: attempt %d %s", job.id, claimed.attempt, outcome.describe())
                if outcome.details.get("code") in SERVICE_TROUBLE_CODES:
                    self._on_service_trouble()
            if await self.writer.write(lease, outcome):
                if outcome.kind is OutcomeKind.COMPLETE:
                    self.completed += 1
                elif outcome.kind is OutcomeKind.FAIL:
                    self.failed += 1
        finally:
            if progress.quiet:
                progress.close_now()
            else:
                await progress.close()
            self.leases.remove(lease)

    async def _bounded(self, job_id: str, outcome: Outcome) -> Outcome:
        """A result within `queue.max_result_bytes` as it is; a bigger one stored in output storage and replaced
        by a reference to it (`stored_result`), so Redis never holds or publishes the body."""
        encoded = compact_json(outcome.result)
        limit = self.queue.settings.max_result_bytes
        if len(encoded) <= limit:  # ASCII JSON: characters are bytes
            return Outcome(OutcomeKind.COMPLETE, result=outcome.result, encoded=encoded)
        body = encoded.encode()
        if self.storage is None:
            return Outcome(
                OutcomeKind.FAIL,
                error=f"the result is {len(body)} bytes, over the limit queue.max_result_bytes={limit}, "
                "and this worker has no output storage",
                details={"kind": "result_too_large", "code": "result_too_large", "bytes": len(body)},
            )
        try:
            stored = await self.storage.put(job_id, "result.json", body, "application/json", kind="result")
        except Exception as exc:  # S3 or disk trouble: the work is done, but the result must be kept to count
            return Outcome(
                OutcomeKind.FAIL,
                error=f"storing the {len(body)}-byte result failed: {type(exc).__name__}: {exc}",
                retryable=True,
                details={"kind": "storage", "code": "storage", "bytes": len(body)},
            )
        log.info("job %s: result of %d bytes kept in output storage (%s)", job_id, len(body), stored.name)
        return Outcome(
            OutcomeKind.COMPLETE, result={"stored_result": stored.to_dict(), "result_bytes": len(body)}
        )

    async def _write_progress(self, job_id: str, token: str, percent: float, message: str | None) -> bool:
        return await self.queue.progress(job_id, token, percent, message)

    async def _call(self, lease: Lease) -> tuple[dict[str, Any] | None, BaseException | None]:
        """Run the connector until it finishes, times out, or the lease must stop; (result, exception)."""
        job = lease.claimed.job
        cjob = ConnectorJob(
            id=job.id,
            service=job.service,
            payload=dict(job.payload),
            attempt=lease.claimed.attempt,
            timeout_s=lease.timeout_s,
            customer_id=job.customer_id,
            token=lease.token,
        )
        assert lease.progress is not None
        report = lease.progress.report
        # A job that waited for parents reads their results first; any other calls the connector directly.
        call = self._process(cjob, job, report) if job.after else self.connector.process(cjob, report)
        proc = asyncio.create_task(call, name=f"job:{job.id}")
        # Woken by the call's end, a stop request or the job's timeout, whichever comes first: one future and one
        # timer handle per job (no task of its own, no timeout context: a short job pays for neither).
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def end(*_: Any) -> None:
            if not ended.done():
                ended.set_result(None)

        proc.add_done_callback(end)
        lease.on_stop = end
        timer = loop.call_later(lease.timeout_s, end)
        if lease.stop is not None:
            end()
        try:
            await ended
            if not proc.done():
                if lease.request_stop(StopReason.TIMEOUT):
                    log.warning("job %s: timed out after %gs; interrupting it", job.id, lease.timeout_s)
                await self._interrupt(lease, proc)
        except asyncio.CancelledError:
            # Our own task is being cancelled (the worker exits): stop the work, then let the cancel through.
            proc.cancel()
            with contextlib.suppress(BaseException):
                await proc
            raise
        finally:
            timer.cancel()
            lease.on_stop = None
        if not proc.done():
            return None, asyncio.CancelledError("the connector call did not stop")
        try:
            value = proc.result()
        except BaseException as exc:  # noqa: BLE001 - every way the call ended is classified by decide()
            return None, exc
        if isinstance(value, ConnectorResult):
            return value.to_dict(), None
        return (dict(value) if isinstance(value, dict) else {"value": value}), None

    async def _process(self, cjob: ConnectorJob, job: Job, report: Any) -> Any:
        """The connector call; a job that waited for parents first gets their results (one read, within the
        attempt's time limit: Redis away ends the attempt as any error of the call does)."""
        if job.after:
            cjob = replace(cjob, parents=await self.queue.parent_results(job))
        return await self.connector.process(cjob, report)

    async def _interrupt(self, lease: Lease, proc: asyncio.Task[Any]) -> None:
        """connector.cancel(), a grace to wind down, then cancel the call's task."""
        try:
            async with asyncio.timeout(CANCEL_CALL_TIMEOUT_S):
                await self.connector.cancel(lease.job_id, lease.token)
        except Exception:
            log.exception("job %s: connector.cancel failed", lease.job_id)
        done, _ = await asyncio.wait({proc}, timeout=self.interrupt_grace_s)
        if not done:
            log.warning(
                "job %s: connector did not stop within %gs; cancelling its task",
                lease.job_id,
                self.interrupt_grace_s,
            )
            proc.cancel()
            await asyncio.wait({proc}, timeout=1.0)
