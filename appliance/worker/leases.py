"""The jobs a worker holds: their leases, one batched heartbeat for all of them, and writing their outcomes.

A lease stays in the table until its outcome is written (or known to be unwritable), so the heartbeat keeps
renewing it while Redis is away and the outcome waits. The fencing token decides: a heartbeat answering
'lost', or LeaseLost on complete/fail, means another worker owns the job now and nothing of ours is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from appliance.queue import ClaimedJob, Queue, WorkerSession
from appliance.queue.compactjson import EncodedJSON, compact_json
from appliance.queue.errors import (
    JobAlreadyFinished,
    JobNotFound,
    LeaseLost,
    QueueError,
    ScriptCode,
    raise_for_code,
)
from appliance.queue.jobbody import Claim
from appliance.worker.completions import Completions
from appliance.worker.outcome import Outcome, OutcomeKind, StopReason
from appliance.worker.progress import ProgressForwarder
from appliance.worker.redislink import RedisLink, is_unreachable

log = logging.getLogger(__name__)

#: complete.lua's code for a written completion, as a plain int (compared once per job).
_OK = int(ScriptCode.OK)


class Lease:
    """One leased job while this worker runs it and until its outcome is written (a slotted class: one is made
    per job, and its fields are read several times per job)."""

    __slots__ = (
        "claimed",
        "job_id",
        "token",
        "timeout_s",
        "started",
        "progress",
        "stop",
        "finishing",
        "on_stop",
        "task",
        "interrupter",
        "call_over",
        "cut",
        "taken_over",
    )

    def __init__(self, claimed: Claim | ClaimedJob, timeout_s: float, started: float | None = None) -> None:
        #: The claimed job as the run reads it (its full Job built only when something asks: `claimed.job`).
        self.claimed = claimed if type(claimed) is Claim else Claim.of(claimed)  # type: ignore[arg-type]
        self.job_id: str = self.claimed.id
        #: The attempt's fencing token.
        self.token: str = self.claimed.token
        self.timeout_s = timeout_s
        self.started = time.monotonic() if started is None else started
        #: Made on the job's first progress report (most short jobs report none).
        self.progress: ProgressForwarder | None = None
        #: Why the runtime interrupted the job, if it did; set once, except that LOST overrides everything.
        self.stop: StopReason | None = None
        #: The outcome is decided and being written (the connector is done with the job).
        self.finishing = False
        #: Called with the lease when a stop is requested (the runner starts interrupting the connector call).
        self.on_stop: Callable[[Lease], Any] | None = None
        #: The task running the job (its connector call runs in it); set while the call runs.
        self.task: asyncio.Task[Any] | None = None
        #: Whoever interrupts the call (made on the first stop request: most jobs never have one).
        self.interrupter: asyncio.Task[None] | None = None
        #: Set when the connector call ended; made by the interrupter when it has to wait for that.
        self.call_over: asyncio.Future[None] | None = None
        #: The interrupter cancelled the call's task (a CancelledError out of the call is its doing).
        self.cut = False
        #: The call did not stop even when cut: the interrupter wrote the outcome, the call's result is dropped.
        self.taken_over = False

    @property
    def shape(self) -> str:
        return self.claimed.shape

    def request_stop(self, reason: StopReason) -> bool:
        """Record why the job must stop; True when this is news (the caller then interrupts the connector)."""
        if self.stop is None or (reason is StopReason.LOST and self.stop is not StopReason.LOST):
            self.stop = reason
            if self.on_stop is not None:
                self.on_stop(self)
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        """The job as the worker status shows it."""
        percent = self.progress.percent if self.progress else 0.0
        return {
            "id": self.job_id,
            "progress": round(percent, 1),
            "attempt": self.claimed.attempt,
            "service": self.claimed.service,
            "running_s": round(time.monotonic() - self.started, 1),
            **({"stopping": self.stop.value} if self.stop else {}),
        }


class LeaseTable:
    """Fencing token → Lease, one entry per attempt; `on_change` is called when a lease is added or removed,
    `on_free` when one is removed (a slot is free: what the claim loop waits for; an added lease is its own).

    Keyed by attempt, not by job: when attempt 1's lease is lost while it still winds down, the same worker may
    claim attempt 2 of that job, and stopping attempt 1 must not touch attempt 2.

    Between `hold()` and `release()` (the claim loop settling a batch, or starting one) the calls wait and are
    made once at `release()`: a batch of 10 leases is one change, not 10 wake-ups of the loop that is running.
    """

    def __init__(
        self, on_change: Callable[[], None] | None = None, on_free: Callable[[], None] | None = None
    ) -> None:
        self._leases: dict[str, Lease] = {}
        self._on_change = on_change or (lambda: None)
        self._on_free = on_free or (lambda: None)
        self._held = False
        self._changed = self._freed = False

    def hold(self) -> None:
        """Defer `on_change`/`on_free` until `release()` (not nested; no await between the two)."""
        self._held = True

    def release(self) -> None:
        """Make the calls deferred since `hold()`, once each."""
        self._held = False
        changed, freed, self._changed, self._freed = self._changed, self._freed, False, False
        if changed:
            self._on_change()
        if freed:
            self._on_free()

    def __len__(self) -> int:
        return len(self._leases)

    def current(self, job_id: str) -> Lease | None:
        """The job's newest attempt held here (an older one's lease is lost: the job was claimed again)."""
        found = [lease for lease in self._leases.values() if lease.job_id == job_id]
        return max(found, key=lambda lease: lease.claimed.attempt) if found else None

    def all(self) -> list[Lease]:
        return list(self._leases.values())

    def add(self, lease: Lease) -> None:
        self._leases[lease.token] = lease
        if self._held:
            self._changed = True
        else:
            self._on_change()

    def remove(self, lease: Lease) -> None:
        if self._leases.get(lease.token) is lease:
            del self._leases[lease.token]
            if self._held:
                self._changed = self._freed = True
                return
            self._on_change()
            self._on_free()

    def tokens(self) -> dict[str, str]:
        """Job id → token of its newest attempt here: what a heartbeat renews."""
        return {lease.job_id: lease.token for lease in sorted(self._leases.values(), key=_attempt)}

    def superseded(self) -> list[Lease]:
        """Leases of attempts the same job has a newer attempt of here: certainly lost."""
        newest = self.tokens()
        return [lease for lease in self._leases.values() if newest[lease.job_id] != lease.token]

    def running(self) -> list[Lease]:
        """Leases whose connector call has not ended yet."""
        return [lease for lease in self._leases.values() if not lease.finishing]


def _attempt(lease: Lease) -> int:
    return lease.claimed.attempt


class Heartbeater:
    """Renews every lease in one call each interval; reports cancel requests and lost leases.

    Also keeps the worker (and the shapes it serves) alive in the queue when it holds no job. While Redis is
    down it retries with backoff, and renews at once when Redis answers again.
    """

    def __init__(
        self,
        session: WorkerSession,
        leases: LeaseTable,
        link: RedisLink,
        *,
        interval_s: float,
        on_cancel: Callable[[Lease], None],
        on_lost: Callable[[Lease], None],
    ) -> None:
        self.session = session
        self.leases = leases
        self.link = link
        self.interval_s = interval_s
        self.on_cancel = on_cancel
        self.on_lost = on_lost
        #: Monotonic time of the last heartbeat Redis answered.
        self.last_ok = time.monotonic()

    async def run(self) -> None:
        while True:
            if await self.beat():
                await asyncio.sleep(self.interval_s)
            else:
                await self.link.pause()

    async def beat(self) -> bool:
        """One heartbeat; False when Redis did not answer."""
        tokens = self.leases.tokens()
        try:
            states = await self.session.heartbeat(tokens)
        except Exception as exc:
            if not is_unreachable(exc):
                log.exception("heartbeat failed")
                return False
            self.link.mark_down(exc)
            return False
        self.link.mark_up()
        self.last_ok = time.monotonic()
        for job_id, state in states.items():
            lease = self.leases.current(job_id)
            if lease is None or lease.token != tokens[job_id]:
                continue
            if state == "lost":
                self.on_lost(lease)
            elif state == "cancelled":
                self.on_cancel(lease)
        for lease in self.leases.superseded():
            if lease.stop is not StopReason.LOST:
                self.on_lost(lease)
        return True


class _Ended:
    """How a job ended, in words, formatted only when the log line is written."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def __str__(self) -> str:
        if self.outcome.kind is OutcomeKind.FAIL:
            return self.outcome.describe()
        return {"complete": "completed", "cancelled": "cancelled on request", "release": "handed back"}[
            self.outcome.kind.value
        ]


def _log_written(lease: Lease, outcome: Outcome) -> None:
    # A completion is logged at DEBUG only (a line per job would cost a busy worker more than the job, and
    # journald drops a unit's lines past its rate limit); everything else that ends a job is news at INFO.
    # Nothing is built for a line that is not written (a completion at INFO).
    level = logging.DEBUG if outcome.kind is OutcomeKind.COMPLETE else logging.INFO
    if not log.isEnabledFor(level):
        return
    log.log(
        level,
        "job %s: %s after %.1fs",
        lease.job_id,
        _Ended(outcome),
        time.monotonic() - lease.started,
    )


def _log_refused(lease: Lease, outcome: Outcome, exc: QueueError) -> None:
    """The queue refused the outcome (`exc`, raised for its code): nothing of ours is written."""
    if isinstance(exc, LeaseLost):
        log.warning(
            "job %s: lease lost; the queue refused its outcome (%s)", lease.job_id, outcome.describe()
        )
    elif isinstance(exc, JobAlreadyFinished | JobNotFound):
        log.warning("job %s: not writing its outcome: %s", lease.job_id, exc)
    else:
        log.error("job %s: the queue rejected its outcome", lease.job_id, exc_info=exc)


class OutcomeWriter:
    """Writes a job's outcome, retrying while Redis is down, until it is written or cannot be anymore."""

    def __init__(self, queue: Queue, link: RedisLink, *, release_reason: str = "drain") -> None:
        self.queue = queue
        self.link = link
        self.release_reason = release_reason
        #: Set to give up on outcomes still waiting for Redis (the worker must exit now).
        self.abandon = asyncio.Event()
        #: Completions wait here to go out in batches (with the claim loop's next claim, or on their own).
        self.completions = Completions(queue)
        #: Tasks retrying a carried completion that could not reach Redis (the worker stops them when it exits).
        self.retries: set[asyncio.Task[None]] = set()

    async def write(self, lease: Lease, outcome: Outcome) -> bool:
        """True when the outcome (or the hand-back) reached the queue."""
        job_id = lease.job_id
        if outcome.kind is OutcomeKind.DROP:
            log.warning(
                "job %s: lease lost (another worker owns it now or it finished); not writing its outcome",
                job_id,
            )
            return False
        while True:
            if lease.stop is StopReason.LOST:
                log.warning(
                    "job %s: lease lost while its outcome (%s) waited; not writing it",
                    job_id,
                    outcome.kind.value,
                )
                return False
            try:
                if outcome.kind is OutcomeKind.COMPLETE:
                    # The claim loop (or a batch task) makes the call: cancelling this wait cannot cut it.
                    await self._write_once(lease, outcome)
                else:
                    # Shielded: a shutdown cancelling this task must not cut a script call in half.
                    await asyncio.shield(self._write_once(lease, outcome))
            except QueueError as exc:
                _log_refused(lease, outcome, exc)
                return False
            except Exception as exc:
                if not self._may_retry(lease, outcome, exc):
                    return False
                await self._wait_retry()
                continue
            self.link.mark_up()
            _log_written(lease, outcome)
            return True

    def _may_retry(self, lease: Lease, outcome: Outcome, exc: Exception) -> bool:
        """After a write failed with `exc`: True when it is worth another try (Redis away), else it is logged."""
        if not is_unreachable(exc):
            log.error("job %s: writing its outcome failed", lease.job_id, exc_info=exc)
            return False
        self.link.mark_down(exc)
        if self.abandon.is_set():
            log.error(
                "job %s: exiting while Redis is down; its outcome (%s) is lost and the lease will expire",
                lease.job_id,
                outcome.kind.value,
            )
            return False
        return True

    # --- completions carried by the claim loop, without a task waiting for each ---------------------------------

    def carried(self) -> bool:
        """Whether the claim loop carries completions with its claims now."""
        return self.completions.carrier is not None

    def complete_later(
        self, lease: Lease, result: dict[str, Any], encoded: str, done: Callable[[Lease, bool], None]
    ) -> None:
        """Queue a small result (`encoded`, its `compact_json`) for the claim loop's next round trip and return:
        no task waits for its answer. `done(lease, written)` is called once its fate is known, as `write` would
        have returned it; while Redis is away a task retries it as `write` does."""
        self.completions.add_settled(
            lease.job_id,
            lease.token,
            EncodedJSON(encoded),
            partial(self._settled, lease, result, encoded, done),
        )

    def _settled(
        self,
        lease: Lease,
        result: dict[str, Any],
        encoded: str,
        done: Callable[[Lease, bool], None],
        answer: int | Exception,
    ) -> None:
        if answer == _OK:  # the usual answer: no Outcome made (a line only at DEBUG)
            self.link.mark_up()
            if log.isEnabledFor(logging.DEBUG):
                _log_written(lease, Outcome(OutcomeKind.COMPLETE, result, encoded=encoded))
            done(lease, True)
            return
        outcome = Outcome(OutcomeKind.COMPLETE, result, encoded=encoded)
        if isinstance(answer, Exception):  # the batch did not reach Redis
            if self._may_retry(lease, outcome, answer):
                task = asyncio.create_task(self._retry(lease, outcome, done), name=f"write:{lease.job_id}")
                self.retries.add(task)
                task.add_done_callback(self.retries.discard)
            else:
                done(lease, False)
            return
        try:
            raise_for_code(answer, lease.job_id)
        except QueueError as exc:
            _log_refused(lease, outcome, exc)
            done(lease, False)
            return
        self.link.mark_up()
        _log_written(lease, outcome)
        done(lease, True)

    async def _retry(self, lease: Lease, outcome: Outcome, done: Callable[[Lease, bool], None]) -> None:
        await self._wait_retry()
        done(lease, await self.write(lease, outcome))

    async def _wait_retry(self) -> None:
        try:
            async with asyncio.timeout(self.link.backoff_s()):
                await self.abandon.wait()
        except TimeoutError:
            pass

    async def _write_once(self, lease: Lease, outcome: Outcome) -> None:
        q, job_id, token, shape = self.queue, lease.job_id, lease.token, lease.shape
        if outcome.kind is OutcomeKind.COMPLETE:
            encoded = outcome.encoded or compact_json(outcome.result)
            if len(encoded) > q.settings.max_result_bytes:
                await q.complete(job_id, token, outcome.result)  # raises ResultTooLarge, for this job alone
            raise_for_code(await self.completions.add(job_id, token, EncodedJSON(encoded)), job_id)
        elif outcome.kind is OutcomeKind.FAIL:
            await q.fail(
                job_id,
                token,
                outcome.error,
                retryable=outcome.retryable,
                details=outcome.details,
                attempt=lease.claimed.attempt,
                shape=shape,
            )
        elif outcome.kind is OutcomeKind.CANCELLED:
            await q.finish_cancelled(job_id, token, shape=shape)
        elif outcome.kind is OutcomeKind.RELEASE:
            await q.release(job_id, token, reason=self.release_reason, shape=shape)
