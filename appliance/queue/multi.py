"""One worker serving several queues (`worker.queues`): the queues behind one Queue-like and one session-like
object, so the worker's runtime drives them exactly as it drives one queue.

`QueueSet` remembers which queue each claimed job came from and sends its progress and outcome there;
`SessionSet` holds one WorkerSession per queue (the worker registers, heartbeats and is woken in each) and
claims from them fairly: every claim starts at the next queue in turn and moves on only when that queue has
nothing for it, so queues with waiting work alternate job by job and an empty queue costs one call. The queues
share one Redis client; in a Cluster each lives in its own slot, so they may sit on different shards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from appliance.queue.client import Queue
from appliance.queue.housekeeper import ReapResult
from appliance.queue.jobbody import Claim
from appliance.queue.models import Capabilities, ClaimedJob, Job
from appliance.queue.schedules import MaterialiseResult
from appliance.queue.session import WorkerSession

Outcome = tuple[str, str, Any]


class QueueSet:
    """Several queues on one client; job-level calls go to the queue the job was claimed from."""

    def __init__(self, queues: Sequence[Queue]) -> None:
        if not queues:
            raise ValueError("a QueueSet needs at least one queue")
        self.queues = list(queues)
        self._owner: dict[str, Queue] = {}

    # The settings, client and mode of the first queue: they are the same for all (one connection, one config).
    @property
    def settings(self) -> Any:
        return self.queues[0].settings

    @property
    def client(self) -> Any:
        return self.queues[0].client

    @property
    def cluster(self) -> bool:
        return self.queues[0].cluster

    @property
    def name(self) -> str:
        return ",".join(q.name for q in self.queues)

    def claimed(self, queue: Queue, jobs: Sequence[ClaimedJob]) -> None:
        for job in jobs:
            self._owner[job.job.id] = queue

    def owner(self, job_id: str) -> Queue:
        """The queue job `job_id` was claimed from (the first queue for a job this worker never claimed)."""
        return self._owner.get(job_id, self.queues[0])

    def _done(self, job_id: str) -> None:
        self._owner.pop(job_id, None)

    async def parent_results(self, job: Job) -> dict[str, Any]:
        """The results of a claimed job's parents, from the queue it came from (parents share its queue)."""
        return await self.owner(job.id).parent_results(job)

    async def progress(self, job_id: str, token: str, *args: Any, **kwargs: Any) -> bool:
        return await self.owner(job_id).progress(job_id, token, *args, **kwargs)

    async def complete(self, job_id: str, token: str, result: Any = None) -> None:
        await self.owner(job_id).complete(job_id, token, result)
        self._done(job_id)

    async def complete_many(self, outcomes: Sequence[Outcome]) -> list[int]:
        """One call per queue among `outcomes`; codes in the order of `outcomes`."""
        codes: dict[int, int] = {}
        groups: dict[int, list[int]] = {}
        for i, (job_id, _, _) in enumerate(outcomes):
            groups.setdefault(self.queues.index(self.owner(job_id)), []).append(i)
        for index, members in groups.items():
            done = await self.queues[index].complete_many([outcomes[i] for i in members])
            codes.update(zip(members, done, strict=True))
        for job_id, _, _ in outcomes:
            self._done(job_id)
        return [codes[i] for i in range(len(outcomes))]

    async def fail(self, job_id: str, token: str, *args: Any, **kwargs: Any) -> Any:
        result = await self.owner(job_id).fail(job_id, token, *args, **kwargs)
        self._done(job_id)
        return result

    async def finish_cancelled(self, job_id: str, token: str, **kwargs: Any) -> None:
        await self.owner(job_id).finish_cancelled(job_id, token, **kwargs)
        self._done(job_id)

    async def release(self, job_id: str, token: str, **kwargs: Any) -> None:
        await self.owner(job_id).release(job_id, token, **kwargs)
        self._done(job_id)

    async def cancel(self, job_id: str) -> str:
        return await self.owner(job_id).cancel(job_id)

    async def reap(self, force: bool = False) -> ReapResult:
        """Reap every queue: the totals, and the soonest anything falls due in any of them."""
        results = [await queue.reap(force=force) for queue in self.queues]
        return ReapResult(
            ran=any(r.ran for r in results),
            records_dropped=sum(r.records_dropped for r in results),
            requeued=sum(r.requeued for r in results),
            dead=sum(r.dead for r in results),
            cancelled=sum(r.cancelled for r in results),
            next_in_ms=_soonest(r.next_in_ms for r in results),
        )

    @property
    def schedules(self) -> AllSchedules:
        """Every queue's repeating jobs, materialised together (the reaper's step)."""
        return AllSchedules(self.queues)

    async def return_jobs_of_worker(self, worker_id: str, reason: str = "worker_failed") -> int:
        return sum([await q.return_jobs_of_worker(worker_id, reason) for q in self.queues])

    @property
    def on_retry_scheduled(self) -> Callable[[int], None] | None:
        return self.queues[0].on_retry_scheduled

    @on_retry_scheduled.setter
    def on_retry_scheduled(self, value: Callable[[int], None] | None) -> None:
        for queue in self.queues:
            queue.on_retry_scheduled = value

    async def close(self) -> None:
        # One client for all: closing the first closes it.
        await self.queues[0].close()


def _soonest(waits: Iterable[int | None]) -> int | None:
    known = [w for w in waits if w is not None]
    return min(known) if known else None


class AllSchedules:
    """The schedules of several queues as the reaper sees them: one materialise pass over all."""

    def __init__(self, queues: Sequence[Queue]) -> None:
        self.queues = queues

    async def materialise(self, now_ms: int | None = None) -> MaterialiseResult:
        results = [await q.schedules.materialise(now_ms) for q in self.queues]
        return MaterialiseResult(
            submitted=sum(r.submitted for r in results),
            duplicates=sum(r.duplicates for r in results),
            skipped=sum(r.skipped for r in results),
            next_in_ms=_soonest(r.next_in_ms for r in results),
        )


class SessionSet:
    """One WorkerSession per queue of a QueueSet, claimed from in turn."""

    def __init__(self, queues: QueueSet, sessions: Sequence[WorkerSession]) -> None:
        self.queues = queues
        self.sessions = list(sessions)
        self.worker_id = self.sessions[0].worker_id
        self.cancel_requests: asyncio.Queue[str] = asyncio.Queue()
        self._next = 0
        self._forwarders = [
            asyncio.create_task(self._forward(s), name=f"cancel-forward:{s.queue.name}")
            for s in self.sessions
        ]

    @classmethod
    async def open(
        cls, queues: QueueSet, worker_id: str, capabilities: Capabilities, *, machine_id: str | None = None
    ) -> SessionSet:
        sessions: list[WorkerSession] = []
        try:
            for queue in queues.queues:
                sessions.append(
                    await WorkerSession.open(queue, worker_id, capabilities, machine_id=machine_id)
                )
        except BaseException:
            for session in sessions:
                with contextlib.suppress(Exception):
                    await session.close(deregister=True)
            raise
        return cls(queues, sessions)

    async def _forward(self, session: WorkerSession) -> None:
        while True:
            self.cancel_requests.put_nowait(await session.cancel_requests.get())

    @property
    def shapes(self) -> list[str]:
        return sorted({s for session in self.sessions for s in session.shapes})

    async def claim(self) -> ClaimedJob | None:
        claimed = await self.claim_many(1)
        return claimed[0] if claimed else None

    async def claim_many(self, count: int) -> list[ClaimedJob]:
        """Up to `count` jobs, starting at the next queue in turn and moving on while slots stay free."""
        claimed: list[ClaimedJob] = []
        start, self._next = self._next, (self._next + 1) % len(self.sessions)
        for i in range(len(self.sessions)):
            session = self.sessions[(start + i) % len(self.sessions)]
            got = await session.claim_many(count - len(claimed))
            self.queues.claimed(session.queue, got)
            claimed += got
            if len(claimed) >= count:
                break
        return claimed

    async def finish_and_claim(
        self, outcomes: Sequence[Outcome], count: int
    ) -> tuple[list[int], list[ClaimedJob]]:
        codes = await self.queues.complete_many(outcomes) if outcomes else []
        return codes, (await self.claim_many(count) if count > 0 else [])

    async def finish_and_lease(
        self, outcomes: Sequence[Outcome], count: int
    ) -> tuple[list[int], list[Claim]]:
        """`finish_and_claim` in the worker runtime's form (`WorkerSession.finish_and_lease`)."""
        codes, claimed = await self.finish_and_claim(outcomes, count)
        return codes, [Claim.of(one) for one in claimed]

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Until any queue may have work for this worker, or `timeout_s`; True if woken."""
        waits = [asyncio.ensure_future(s.wait_for_work(timeout_s)) for s in self.sessions]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return any(not w.cancelled() and w.exception() is None and w.result() for w in done)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def wake(self) -> None:
        for session in self.sessions:
            session.wake()

    async def heartbeat(self, leases: Mapping[str, str]) -> dict[str, str]:
        """Every session heartbeats (the worker stays live in each queue), each with its own queue's leases."""
        states: dict[str, str] = {}
        for session in self.sessions:
            mine = {j: t for j, t in leases.items() if self.queues.owner(j) is session.queue}
            states.update(await session.heartbeat(mine))
        return states

    async def set_status(self, status: Mapping[str, Any]) -> None:
        for session in self.sessions:
            await session.set_status(status)

    async def close(self, deregister: bool = True) -> None:
        for task in self._forwarders:
            task.cancel()
        await asyncio.gather(*self._forwarders, return_exceptions=True)
        for session in self.sessions:
            await session.close(deregister=deregister)


async def open_session(
    queue: Queue | QueueSet, worker_id: str, capabilities: Capabilities, *, machine_id: str | None = None
) -> WorkerSession:
    """A WorkerSession on one queue, a SessionSet on several (typed as the session it stands in for)."""
    if isinstance(queue, QueueSet):
        return cast(
            WorkerSession, await SessionSet.open(queue, worker_id, capabilities, machine_id=machine_id)
        )
    return await WorkerSession.open(queue, worker_id, capabilities, machine_id=machine_id)


__all__ = ["QueueSet", "SessionSet", "open_session"]
