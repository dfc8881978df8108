"""Running one leased job through the connector: timeout, interruption, progress, and its outcome.

    runner = JobRunner(connector, queue, leases, link, writer, default_timeout_s=600)
    await runner.run(claimed)          # returns once the outcome is written (or known unwritable)

A job is interrupted for one of the reasons in `StopReason` (cancel requested, timeout, lease lost, hand-back):
`connector.cancel(job_id, token)` asks the service to stop that attempt (never another attempt of the job), the connector call gets `interrupt_grace_s` to wind down,
then its task is cancelled. The outcome follows from what the call returned or raised and why it was stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import replace
from functools import partial
from typing import Any

from appliance.queue import ClaimedJob, Job, Queue
from appliance.queue.compactjson import compact_json
from appliance.queue.jobbody import Claim
from appliance.worker.connectors.base import Connector, ConnectorJob, ConnectorResult, connector_job
from appliance.worker.deadlines import Deadlines
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
        #: The time limits of the running calls (one timer handle for all of them).
        self.deadlines = Deadlines(self._timed_out)
        #: The interrupters of stopped jobs still at work (the worker stops them when it exits).
        self.interrupters: set[asyncio.Task[None]] = set()

    def stop(self, lease: Lease, reason: StopReason) -> None:
        """Ask the job's run to end for `reason`; the run interrupts the connector."""
        if lease.request_stop(reason):
            log.info("job %s: stopping (%s)", lease.job_id, reason.value)

    def lease_for(self, claimed: Claim | ClaimedJob) -> Lease:
        """Enter a freshly claimed job in the lease table (at once, so capacity counts it before it runs)."""
        claim = claimed if type(claimed) is Claim else Claim.of(claimed)  # type: ignore[arg-type]
        lease = Lease(claim, timeout_s=float(claim.timeout_s or self.default_timeout_s))
        self.leases.add(lease)
        return lease

    def progress_of(self, lease: Lease) -> ProgressForwarder:
        """The job's progress forwarder, made on its first report (most short jobs report none)."""
        if lease.progress is None:
            job_id, token = lease.job_id, lease.token
            lease.progress = ProgressForwarder(
                partial(self._write_progress, job_id, token),
                self.link,
                on_cancel=lambda: self.stop(lease, StopReason.CANCEL),
                on_lost=lambda: self.stop(lease, StopReason.LOST),
            )
            if lease.finishing:
                lease.progress.close_now()  # a report after the call ended starts nothing
        return lease.progress

    async def _report(self, lease: Lease, percent: float, message: str | None = None) -> None:
        """The connector's ProgressCallback for this job."""
        await self.progress_of(lease).report(percent, message)

    async def run(self, lease: Lease, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Run the job to its outcome and write it; the lease leaves the table when done. The connector call
        runs in this task (on `loop`, the running loop, when the caller knows it); a stop request or the timeout
        starts an interrupter beside it (`_interrupt`)."""
        claim = lease.claimed
        # Per job, a line only at DEBUG: at INFO a busy worker would spend more on its log than on the job
        # (and journald drops a unit's lines past its rate limit). Failures and stops are logged at INFO+.
        if log.isEnabledFor(logging.DEBUG):  # one call, not debug()'s two and its arguments' tuple
            log.debug(
                "job %s: claimed (service %s, attempt %d, timeout %gs)",
                claim.id,
                claim.service,
                claim.attempt,
                lease.timeout_s,
            )
        result: dict[str, Any] | None
        exc: BaseException | None
        try:
            call, task = self._begin(lease, loop)
            try:
                value = await call
            except asyncio.CancelledError as cancelled:
                result, exc = self._cancelled(lease, task, cancelled)
            except Exception as failed:  # every way the call ended is classified by decide()
                result, exc = None, failed
            else:
                result, exc = _result_of(value), None
            finally:
                self._end(lease, task)
            if lease.interrupter is not None and not lease.interrupter.done():
                await lease.interrupter  # it returns once its connector.cancel() call is back
        except BaseException:
            if not lease.taken_over:  # cancelled: the worker exits
                await self._close_progress(lease)
                self.leases.remove(lease)
            raise
        if lease.taken_over:  # the interrupter wrote the outcome: this late result is dropped
            return
        if (
            exc is None
            and lease.progress is None
            and lease.stop is not StopReason.LOST
            and self._handed(lease, result)
        ):
            return  # the usual end of a short job, without a coroutine for it
        await self._finish(lease, result, exc)

    def _handed(self, lease: Lease, result: dict[str, Any] | None) -> bool:
        """A small result of a call that ended well, handed to the claim loop's next round trip (what `_finish`
        does for it, and what decide() makes of it, encoded once); False where `_finish` must do it."""
        if not self.writer.carried():
            return False
        done = result or {}
        try:
            encoded = compact_json(done)
        except Exception:
            return False  # `_finish` meets the error again and ends the lease
        if len(encoded) > self.queue.settings.max_result_bytes:  # ASCII JSON: characters are bytes
            return False
        lease.finishing = True
        self.writer.complete_later(lease, done, encoded, self._written)
        return True

    async def _finish(self, lease: Lease, result: dict[str, Any] | None, exc: BaseException | None) -> None:
        """Decide the outcome of the ended call and write it; the lease leaves the table when done. A small
        result the claim loop carries is handed over (`OutcomeWriter.complete_later`) and this returns at once:
        the loop's round trip settles it (`_written`), so no task waits for it."""
        lease.finishing = True
        progress = lease.progress
        handed = False
        try:
            if progress is not None:
                if lease.stop is not StopReason.LOST and exc is None:
                    await progress.flush()  # the last value before the result, never after it
                else:
                    await progress.close()
            if exc is None and lease.stop is not StopReason.LOST and self.writer.carried():
                # The usual end of a short job (what decide() makes of it, encoded once): a small result goes
                # with the claim loop's next round trip.
                done = result or {}
                encoded = compact_json(done)
                if len(encoded) <= self.queue.settings.max_result_bytes:  # ASCII JSON: characters are bytes
                    if lease.progress is not None:  # no close coroutine for a job that reported nothing
                        await lease.progress.close()
                    self.writer.complete_later(lease, done, encoded, self._written)
                    handed = True
                    return
            await self._write(lease, result, exc)
        finally:
            if not handed:
                await self._close_progress(lease)
                self.leases.remove(lease)

    async def _write(self, lease: Lease, result: dict[str, Any] | None, exc: BaseException | None) -> None:
        """Every other end: decide the outcome, keep a big result in output storage, write it and count it."""
        outcome = decide(result, exc, lease.stop, timeout_s=lease.timeout_s)
        if outcome.kind is OutcomeKind.COMPLETE:
            outcome = await self._bounded(lease.job_id, outcome)
        if exc is not None and outcome.kind is OutcomeKind.FAIL:
            log.warning("job %s: attempt %d %s", lease.job_id, lease.claimed.attempt, outcome.describe())
            if outcome.details.get("code") in SERVICE_TROUBLE_CODES:
                self._on_service_trouble()
        if await self.writer.write(lease, outcome):
            if outcome.kind is OutcomeKind.COMPLETE:
                self.completed += 1
            elif outcome.kind is OutcomeKind.FAIL:
                self.failed += 1

    def _written(self, lease: Lease, written: bool) -> None:
        """A completion handed to the claim loop was settled: written (True) or refused/lost (logged)."""
        if written:
            self.completed += 1
        self.leases.remove(lease)

    @staticmethod
    async def _close_progress(lease: Lease) -> None:
        if lease.progress is not None:
            await lease.progress.close()

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

    def _begin(
        self, lease: Lease, loop: asyncio.AbstractEventLoop | None
    ) -> tuple[Coroutine[Any, Any, Any], asyncio.Task[Any]]:
        """The connector call of the job, to run in this task: (its coroutine, this task). A stop request or the
        job's timeout meanwhile starts the interrupter (`_interrupt`): the timeout is an entry in the runner's
        `Deadlines` (one timer for all jobs), and no task or future of its own (a short job pays for neither)."""
        claim = lease.claimed
        cjob = connector_job(claim, lease.timeout_s)
        report = partial(self._report, lease)
        # A job that waited for parents reads their results first; any other calls the connector directly.
        call = self._process(cjob, claim.job, report) if claim.after else self.connector.process(cjob, report)
        if loop is None:
            loop = asyncio.get_running_loop()
        # The loop given: no `get_running_loop` (in CPython 3.11 each call asks the OS for the pid).
        task = lease.task = asyncio.current_task(loop)
        assert task is not None
        self.deadlines.add(lease, loop)  # the timeout: its end is `lease.task = None` in `_end`
        lease.on_stop = self._interrupt_soon
        if lease.stop is not None:
            self._interrupt_soon(lease)
        return call, task

    @staticmethod
    def _cancelled(
        lease: Lease, task: asyncio.Task[Any], exc: asyncio.CancelledError
    ) -> tuple[None, BaseException]:
        """The call raised CancelledError: (no result, it) when the interrupter cut the call; re-raised when this
        task itself is being cancelled (the worker exits: the work stopped with it)."""
        if lease.cut:  # the interrupter cut the call: that cancellation ends the call, not this task
            lease.cut = False
            task.uncancel()
        if task.cancelling():
            raise exc
        return None, exc

    @staticmethod
    def _end(lease: Lease, task: asyncio.Task[Any]) -> None:
        """The call is over, however it ended."""
        if lease.cut and task.cancelling():  # the call swallowed the cut: this task is not cancelled
            task.uncancel()
        lease.cut = False
        lease.on_stop = None
        lease.task = None
        if lease.call_over is not None and not lease.call_over.done():
            lease.call_over.set_result(None)

    def _timed_out(self, lease: Lease) -> None:
        if lease.request_stop(StopReason.TIMEOUT):  # news: the call is interrupted (`_interrupt_soon`)
            log.warning("job %s: timed out after %gs; interrupting it", lease.job_id, lease.timeout_s)

    def _interrupt_soon(self, lease: Lease) -> None:
        """A stop was requested while the call runs: start its interrupter (once)."""
        if lease.interrupter is None and lease.task is not None:
            lease.interrupter = asyncio.create_task(self._interrupt(lease), name=f"interrupt:{lease.job_id}")
            self.interrupters.add(lease.interrupter)
            lease.interrupter.add_done_callback(self.interrupters.discard)

    async def _process(self, cjob: ConnectorJob, job: Job, report: Any) -> Any:
        """The connector call; a job that waited for parents first gets their results (one read, within the
        attempt's time limit: Redis away ends the attempt as any error of the call does)."""
        if job.after:
            cjob = replace(cjob, parents=await self.queue.parent_results(job))
        return await self.connector.process(cjob, report)

    async def _interrupt(self, lease: Lease) -> None:
        """connector.cancel(), a grace to wind down, then cancel the call. A call that does not stop even then is
        left behind: this task writes the job's outcome as if the call had raised CancelledError."""
        try:
            async with asyncio.timeout(CANCEL_CALL_TIMEOUT_S):
                await self.connector.cancel(lease.job_id, lease.token)
        except Exception:
            log.exception("job %s: connector.cancel failed", lease.job_id)
        if lease.task is None:
            return  # the call is over: the run goes on with its outcome
        over = lease.call_over = asyncio.get_running_loop().create_future()
        done, _ = await asyncio.wait({over}, timeout=self.interrupt_grace_s)
        if done or lease.task is None:
            return
        log.warning(
            "job %s: connector did not stop within %gs; cancelling its task",
            lease.job_id,
            self.interrupt_grace_s,
        )
        lease.cut = True
        lease.task.cancel()
        done, _ = await asyncio.wait({over}, timeout=1.0)
        if done or lease.task is None:
            return
        lease.taken_over = True
        await self._finish(lease, None, asyncio.CancelledError("the connector call did not stop"))


def _result_of(value: Any) -> dict[str, Any]:
    """The job result of what the connector call returned."""
    if isinstance(value, ConnectorResult):
        return value.to_dict()
    return dict(value) if isinstance(value, dict) else {"value": value}
