"""The leased side of the queue, what a worker (and whoever returns a dead worker's jobs) calls: claim,
heartbeat, progress, complete, fail, release, return the jobs of a worker."""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from appliance.queue.compactjson import EncodedJSON, compact_json
from appliance.queue.conn import Call, QueueConnection
from appliance.queue.errors import NotDurable, QueueError, ResultTooLarge, ScriptCode, raise_for_code
from appliance.queue.jobbody import Claim, claims_of
from appliance.queue.limits import Limits
from appliance.queue.models import ClaimedJob, JobStatus
from appliance.queue.producer import shape_of_job
from appliance.queue.records import Lease
from appliance.queue.shapes import WorkerClass

log = logging.getLogger(__name__)
_compact = compact_json

#: Most jobs one claim call leases.
MAX_CLAIM_BATCH = 256
#: Claim calls before `claim_many` gives up on a race it keeps losing (each lost one is a read-only call).
CLAIM_TRIES = 8
#: Life of a worker class SET after it was last written (ms); once it is gone claim.lua answers 'noclass' and the
#: client writes it again, so classes no worker uses any more disappear on their own.
CLAIM_CLASS_TTL_MS = 86_400_000

Outcome = tuple[str, str, Any]
_HEARTBEAT = {ScriptCode.OK: "ok", ScriptCode.CANCEL_REQUESTED: "cancelled", ScriptCode.LEASE_LOST: "lost"}
_FAILED = {
    ScriptCode.RETRY_SCHEDULED: JobStatus.PENDING,
    ScriptCode.DEAD: JobStatus.DEAD,
    ScriptCode.FAILED: JobStatus.FAILED,
    ScriptCode.CANCELLED: JobStatus.CANCELLED,
}


class LeaseClient:
    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn
        self._classes: dict[tuple[str, ...], WorkerClass] = {}
        #: Called with the delay (ms) of every retry `fail` schedules: this process's reaper wakes for it, since
        #: the time it last read from the queue does not include it.
        self.on_retry_scheduled: Callable[[int], None] | None = None
        #: Called when a completion released waiting children (into the delayed set, due at once): moves them
        #: into their ready indexes now instead of at the reaper's next pass (Housekeeper.requeue_due).
        self.on_children_released: Callable[[], Awaitable[object]] | None = None
        #: The last round trip found no feature in use (finish_claim.lua's answer): the next one calls
        #: finish_claim_quiet.lua, with fewer KEYS, which answers 'busy' (changing nothing) once one is.
        self.quiet = True

    # --- claiming ---------------------------------------------------------------------------------------------

    def claim_call(
        self,
        worker_id: str,
        worker_class: WorkerClass,
        token: str,
        count: int = 1,
        *,
        pool: str | None = None,
        release_due: bool = True,
    ) -> Call:
        """The call of claim.lua exactly as `claim_many` sends it: `pool` is the worker's (per-pool caps);
        `release_due` asks for the 'unlimit' answer while a limited customer's held jobs are due back."""
        slack = self.conn.settings.claim_slack_ms * 1000  # scores count submission time in µs
        candidates = list(worker_class.candidates)
        due = "1" if release_due else "0"
        args = [worker_id, token, self.conn.settings.lease_ms, count, slack, pool or "", due, *candidates]
        return self.conn.prepare("claim", args, class_id=worker_class.class_id, candidates=candidates)

    def finish_claim_call(
        self,
        complete: Call,
        claim: Call,
        worker_class: WorkerClass,
        idle_channel: str | None = None,
        quiet: bool = False,
    ) -> Call:
        """finish_claim.lua: the call `complete` of complete.lua, then the call `claim` of claim.lua, as one call;
        with `idle_channel` (the worker's hub channel), a claim that takes nothing registers the worker as idle
        for the class's shapes in the same call. `quiet`: finish_claim_quiet.lua, the same ARGV."""
        common = len(self.conn.common())
        done, take = complete[2][common:], claim[2][common:]
        candidates = list(worker_class.candidates)
        idle = list(worker_class.shapes) if idle_channel else []
        register = [idle_channel, *idle] if idle_channel else []
        one = worker_class.shapes[0] if len(worker_class.shapes) == 1 else ""  # quiet: no walk of `heads`
        args = [len(done), *done, len(register), *register, one, *take]
        name = "finish_claim_quiet" if quiet else "finish_claim"
        return self.conn.prepare(name, args, class_id=worker_class.class_id, candidates=candidates, idle=idle)

    async def round_trip(
        self, complete: Call, claim: Call, worker_class: WorkerClass, idle_channel: str | None = None
    ) -> list[Any]:
        """[codes, claim reply, registered] from finish_claim_quiet.lua while no feature was in use, else (or when
        it answers 'busy') from finish_claim.lua, whose answer says whether one still is."""
        if self.quiet:
            quiet = self.finish_claim_call(complete, claim, worker_class, idle_channel, True)
            answer = await self.conn.run(quiet)
            if answer != "busy":
                return list(answer[:3])
        answer = await self.conn.run(self.finish_claim_call(complete, claim, worker_class, idle_channel))
        self.quiet = bool(answer[3])
        return list(answer[:3])

    def worker_class(self, shapes: Sequence[str]) -> WorkerClass:
        """The class of a shape list (cached: sessions re-use the same list until a new shape appears)."""
        frozen = tuple(shapes)
        found = self._classes.get(frozen)
        if found is None:
            if len(self._classes) >= 256:
                self._classes.clear()
            found = self._classes[frozen] = WorkerClass.of(frozen)
        return found

    async def register_class(self, worker_class: WorkerClass) -> None:
        """Write the class SET claim.lua walks against (claims also write it when they find it missing)."""
        key = self.conn.keys.worker_class(worker_class.class_id)
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.sadd(key, *worker_class.shapes)
        pipe.pexpire(key, CLAIM_CLASS_TTL_MS)
        await pipe.execute()

    async def claim(
        self, worker_id: str, shapes: Sequence[str], *, pool: str | None = None
    ) -> ClaimedJob | None:
        """Lease the best waiting job among `shapes`, or None when none waits."""
        claimed = await self.claim_many(worker_id, shapes, 1, pool=pool)
        return claimed[0] if claimed else None

    async def claim_many(
        self, worker_id: str, shapes: Sequence[str], count: int, *, pool: str | None = None
    ) -> list[ClaimedJob]:
        """Lease up to `count` of the best waiting jobs among `shapes`, best first, in one script call when
        the best shape is among the client's candidates (claim.lua's hint keeps them right); each job gets its own
        fencing token. Fewer than `count` come back when the next job ranks behind another shape's best.
        `pool`: the worker's pool, which per-pool caps of customers count against."""
        return (await self.finish_and_claim((), worker_id, shapes, count, pool=pool))[1]

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        worker_id: str,
        shapes: Sequence[str],
        count: int,
        *,
        pool: str | None = None,
    ) -> tuple[list[int], list[ClaimedJob]]:
        """`complete_many(outcomes)` and `claim_many(...)` in one script call (finish_claim.lua; a retry of the
        claim goes alone): the loop of a worker whose jobs are short. Returns (complete codes, claimed jobs)."""
        codes, claimed, _ = await self.finish_and_claim_or_idle(outcomes, worker_id, shapes, count, pool=pool)
        return codes, claimed

    @property
    def one_call(self) -> bool:
        """Whether completions ride with the claim in one call (finish_claim.lua), which then also registers an
        idle worker: not on a Cluster client, and not with durable completions (they WAIT on their own, so a
        NotDurable cannot swallow a claim's reply)."""
        return not self.conn.cluster and not self.conn.settings.durable_replicas

    async def finish_and_claim_or_idle(
        self,
        outcomes: Sequence[Outcome],
        worker_id: str,
        shapes: Sequence[str],
        count: int,
        *,
        pool: str | None = None,
        idle_channel: str | None = None,
    ) -> tuple[list[int], list[ClaimedJob], bool]:
        """`finish_and_claim`, and with `idle_channel` (the hub channel of a WorkerSession's process) a claim that
        takes nothing registers the worker as idle in the same call (finish_claim.lua; idle.lua's check: not
        while a job of its shapes waits): (complete codes, claimed jobs, registered). Not registered where the
        call is not made (not `one_call`, a first answer other than 'none'): the session then registers with
        idle.lua."""
        args = (outcomes, worker_id, shapes, count)
        codes, claims, registered = await self.finish_and_lease(*args, pool=pool, idle_channel=idle_channel)
        return codes, [claim.claimed for claim in claims], registered

    async def finish_and_lease(
        self,
        outcomes: Sequence[Outcome],
        worker_id: str,
        shapes: Sequence[str],
        count: int,
        *,
        pool: str | None = None,
        idle_channel: str | None = None,
    ) -> tuple[list[int], list[Claim], bool]:
        """`finish_and_claim_or_idle` for the worker runtime: each job a `Claim` (its Job built on demand)."""
        count = min(count, MAX_CLAIM_BATCH)
        if not shapes or count < 1:
            return await self.complete_many(outcomes), [], False
        worker_class = self.worker_class(shapes)
        codes: list[int] = []
        if outcomes and not self.one_call:
            codes = await self.complete_many(outcomes)
        pipelined = self.one_call and bool(outcomes or idle_channel)
        release_due = True
        for attempt in range(CLAIM_TRIES):
            token = secrets.token_hex(12)
            call = self.claim_call(worker_id, worker_class, token, count, pool=pool, release_due=release_due)
            registered = False
            if pipelined and attempt == 0:
                complete = self.complete_call(outcomes)
                done, reply, registered = await self.round_trip(complete, call, worker_class, idle_channel)
                codes = await self._settled(done)
            else:
                reply = await self.conn.run(call)
            outcome = reply[0]
            if outcome == "ok":
                worker_class.take_hint(reply[1])
                return codes, claims_of(worker_id, token, reply), False
            if outcome == "none":
                worker_class.take_hint("")
                return codes, [], bool(registered)
            if outcome == "retry":
                worker_class.take_hint(reply[1])
            elif outcome == "noclass":
                await self.register_class(worker_class)
            elif outcome == "unlimit":
                # A lease of a limited customer ended (or a token accrued): its held jobs go back in line first,
                # so they rank as they did. Once per claim: the next call claims whatever is still due.
                await Limits(self.conn).release_due()
                release_due = False
            else:
                raise QueueError(f"claim.lua answered {reply!r}")
        # Other workers kept taking the best job first; `worker_class.hint` still names waiting shapes, which
        # tells WorkerSession to come back at once.
        return codes, [], False

    # --- while running ----------------------------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: str, leases: Mapping[str, str], shapes: Sequence[str] = ()
    ) -> dict[str, str]:
        """Renew all of a worker's leases in one call: {job id: 'ok' | 'cancelled' | 'lost'}."""
        flat: list[str] = []
        for job_id, token in leases.items():
            flat += [job_id, token]
        args = [worker_id, self.conn.settings.lease_ms, len(shapes), *shapes, *flat]
        codes = await self.conn.run(self.conn.prepare("heartbeat", args))
        return {job_id: _HEARTBEAT[ScriptCode(int(c))] for job_id, c in zip(leases, codes, strict=True)}

    async def progress(
        self,
        job_id: str,
        token: str,
        percent: float,
        message: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record progress; returns True when the job's cancellation was requested. LeaseLost if not ours."""
        record: dict[str, Any] = {"percent": round(max(0.0, min(100.0, float(percent))), 2)}
        if message:
            record["message"] = message[:500]
        if data:
            record["data"] = dict(data)
        public = _compact({k: v for k, v in record.items() if k != "data"})
        call = self.conn.prepare("progress", [job_id, token, _compact(record), record["percent"], public])
        code = raise_for_code(int(await self.conn.run(call)), job_id)
        return code == ScriptCode.CANCEL_REQUESTED

    # --- outcomes ---------------------------------------------------------------------------------------------

    async def complete(self, job_id: str, token: str, result: Any = None) -> None:
        """Store a job's result and end its lease; LeaseLost when `token` no longer owns the job."""
        raise_for_code((await self.complete_many([(job_id, token, result)]))[0], job_id)

    async def complete_many(self, outcomes: Sequence[Outcome]) -> list[int]:
        """Complete several leased jobs, (job id, token, result) each, in one script call. Returns one code per
        job (ScriptCode.OK or ScriptCode.LEASE_LOST), so one lost lease does not hold back the others."""
        if not outcomes:
            return []
        try:
            codes = await self.conn.run(self.complete_call(outcomes), durable=True)
        except NotDurable as exc:
            # Written on the primary; nothing the completing worker could do differs: say so and go on.
            log.warning("completed %s, but %s", ", ".join(o[0] for o in outcomes), exc)
            codes = exc.results[0]
        return await self._settled(codes)

    async def _settled(self, codes: Sequence[Any]) -> list[int]:
        """complete.lua's codes as callers know them (OK, LEASE_LOST); children that a completion released go
        into line now (the reaper would move them at its next pass; a failure here leaves them to it)."""
        out = [int(c) for c in codes]
        if ScriptCode.RELEASED_CHILDREN in out:
            out = [ScriptCode.OK if c == ScriptCode.RELEASED_CHILDREN else c for c in out]
            if self.on_children_released is not None:
                try:
                    await self.on_children_released()
                except Exception as exc:  # noqa: BLE001 - the completions stand; the reaper moves them later
                    log.warning("released children are left to the reaper: %s", exc)
        return out

    def complete_call(self, outcomes: Sequence[Outcome]) -> Call:
        """The call of complete.lua for these outcomes; ResultTooLarge names a result over the limit."""
        args: list[Any] = [self.conn.settings.result_ttl_s * 1000]
        limit = self.conn.settings.max_result_bytes
        for job_id, token, result in outcomes:
            encoded = result if isinstance(result, EncodedJSON) else _compact(result)
            if len(encoded) > limit:  # json.dumps writes ASCII: characters are bytes
                raise ResultTooLarge(f"the result of job {job_id}", len(encoded), "max_result_bytes", limit)
            args += [job_id, token, encoded]
        return self.conn.prepare("complete", args)

    def retry_delay_ms(self, attempt: int, retry_after_s: float | None = None) -> int:
        """Exponential backoff with equal jitter, never shorter than a service's Retry-After."""
        settings = self.conn.settings
        ceiling = min(settings.retry_max_ms, settings.retry_base_ms * 2 ** max(0, attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after_s:
            delay = max(delay, retry_after_s * 1000)
        return int(delay)

    async def fail(
        self,
        job_id: str,
        token: str,
        error: str,
        *,
        retryable: bool,
        details: Mapping[str, Any] | None = None,
        attempt: int | None = None,
        shape: str | None = None,
        cancelled: bool = False,
    ) -> JobStatus:
        """Record a failed attempt. Returns the job's new status: pending (retry), failed, dead or cancelled."""
        shape = shape or await shape_of_job(self.conn, job_id)
        if attempt is None:
            attempt = int(await self.conn.client.hget(self.conn.keys.attempts, job_id) or 1)
        details = dict(details or {})
        record = {
            "message": str(error)[:2000],
            "kind": "cancelled" if cancelled else ("retryable" if retryable else "permanent"),
            "attempt": attempt,
            "at": int(time.time() * 1000),
            **({"details": details} if details else {}),
        }
        disposition = "cancelled" if cancelled else ("retry" if retryable else "permanent")
        delay = self.retry_delay_ms(attempt, details.get("retry_after_s")) if retryable else 0
        settings = self.conn.settings
        args = [
            job_id,
            token,
            _compact(record),
            disposition,
            delay,
            settings.result_ttl_s * 1000,
            settings.dead_ttl_s * 1000,
            shape,
            self.conn.wake_check,
            _compact({k: v for k, v in record.items() if k != "details"}),
        ]
        code = raise_for_code(int(await self.conn.run(self.conn.prepare("fail", args, shape=shape))), job_id)
        if code == ScriptCode.RETRY_SCHEDULED and self.on_retry_scheduled is not None:
            self.on_retry_scheduled(delay)
        return _FAILED[ScriptCode(code)]

    async def finish_cancelled(self, job_id: str, token: str, shape: str | None = None) -> None:
        """The worker stopped a job whose cancellation was requested: end it cancelled."""
        await self.fail(job_id, token, "cancelled on request", retryable=False, shape=shape, cancelled=True)

    # --- handing back -----------------------------------------------------------------------------------------

    async def _release(self, job_id: str, who: str, holder: str, reason: str, shape: str | None) -> int:
        """release.lua: `who` is 'token' (`holder` is the fencing token) or 'worker' (`holder` is its id)."""
        shape = shape or await shape_of_job(self.conn, job_id)
        settings = self.conn.settings
        args = [
            job_id,
            who,
            holder,
            reason,
            shape,
            self.conn.wake_check,
            settings.result_ttl_s * 1000,
            settings.dead_ttl_s * 1000,
        ]
        return raise_for_code(
            int(await self.conn.run(self.conn.prepare("release", args, shape=shape))), job_id
        )

    async def release(self, job_id: str, token: str, reason: str = "drain", shape: str | None = None) -> None:
        """Hand a leased job back at its place in line; the attempt does not count."""
        await self._release(job_id, "token", token, reason, shape)

    async def jobs_of_worker(self, worker_id: str) -> list[str]:
        """Ids of the jobs a worker holds leases on (a scan of the active leases, not of all jobs)."""
        found = []
        async for job_id, owner in self.conn.client.hscan_iter(self.conn.keys.owner, count=500):
            lease = Lease.decode(owner)
            if lease and lease.worker == worker_id:
                found.append(job_id)
        return found

    async def return_job_of_worker(self, job_id: str, worker_id: str, reason: str = "worker_failed") -> int:
        """Put one job leased by a dead worker back in line (the attempt counts): ScriptCode.OK, DEAD (that was
        its last attempt) or CANCELLED (its cancellation had been requested). LeaseLost when the worker does
        not hold it (any more)."""
        return await self._release(job_id, "worker", worker_id, reason, None)

    async def return_jobs_of_worker(self, worker_id: str, reason: str = "worker_failed") -> int:
        """Put every job leased by a dead worker back in line now (the attempt counts). Returns how many."""
        returned = 0
        for job_id in await self.jobs_of_worker(worker_id):
            try:
                await self.return_job_of_worker(job_id, worker_id, reason)
                returned += 1
            except QueueError:
                continue  # finished or re-leased meanwhile
        return returned
