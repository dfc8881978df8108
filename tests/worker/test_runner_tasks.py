"""What running a job costs the event loop (issue 14), in-process against a real Redis: counted in tasks, never
timed. The behaviour around it (timeouts, cancellation, lost leases, the drain) is tested through the real worker
process in test_worker_process.py; here also a connector call that will not stop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from appliance.queue import Capabilities, JobSpec, JobStatus, Queue, WorkerSession
from appliance.worker.connectors.base import ConnectorJob, ConnectorOptions, ConnectorResult, ProgressCallback
from appliance.worker.connectors.echo import EchoConnector
from appliance.worker.execution import JobRunner
from appliance.worker.leases import LeaseTable, OutcomeWriter
from appliance.worker.redislink import RedisLink
from appliance.worker.storage import LocalStorage


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    q = await Queue.connect(redis_url)
    yield q
    await q.close()


def runner_of(queue: Queue, connector: Any) -> JobRunner:
    link = RedisLink()
    return JobRunner(connector, queue, LeaseTable(), link, OutcomeWriter(queue, link), default_timeout_s=60)


async def claim(queue: Queue, count: int, **spec: Any) -> tuple[WorkerSession, list[Any]]:
    await queue.submit_many([JobSpec(service="echo", **spec) for _ in range(count)])
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    claimed = await session.claim_many(count)
    assert len(claimed) == count
    return session, claimed


def claim_loop(
    session: WorkerSession,
    runner: JobRunner,
    link: RedisLink,
    *,
    capacity: int,
    claim_timeout_s: float,
    fleet: Any = None,
) -> tuple[Any, Any]:
    """A claim loop over `session` and `runner`, its echo service healthy; with its stop signals."""
    from appliance.worker.claimloop import ClaimLoop
    from appliance.worker.drain import FleetDrain, StopSignals
    from appliance.worker.housekeeping import ServiceHealth

    service = ServiceHealth(runner.connector, "echo", interval_s=60, down_interval_s=60)
    service.healthy = True
    signals = StopSignals()
    loop = ClaimLoop(
        session,
        fleet if fleet is not None else FleetDrain(runner.queue.client, "m", link),
        runner,
        leases=runner.leases,
        link=link,
        signals=signals,
        service=service,
        capacity=capacity,
        claim_timeout_s=claim_timeout_s,
    )
    return loop, signals


async def test_a_job_calls_its_connector_in_its_run_task_not_in_a_task_of_its_own(
    queue: Queue, tmp_path: Path
) -> None:
    # Before: every job's connector call ran in a second task beside its run (4 jobs, 4 more tasks), woken
    # through a future. Now the call runs in the run's own task; an interrupter task is made only for a job
    # that must be stopped. (The completions' sender, which sends the batch while no claim loop runs, stays.)
    connector = EchoConnector(options=ConnectorOptions(concurrency=4), storage=LocalStorage(tmp_path))
    runner = runner_of(queue, connector)
    session, claimed = await claim(queue, 4)
    runs = [asyncio.create_task(runner.run(runner.lease_for(c))) for c in claimed]
    created: list[asyncio.Task[Any]] = []
    loop = asyncio.get_running_loop()

    def counting(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop)
        created.append(task)
        return task

    loop.set_task_factory(counting)  # type: ignore[arg-type]
    try:
        await asyncio.gather(*runs)
    finally:
        loop.set_task_factory(None)
    names = [t.get_name() for t in created]
    assert [n for n in names if n != "complete-batch"] == [], names
    assert runner.completed == 4 and len(runner.leases) == 0
    for c in claimed:
        job = await queue.get(c.job.id)
        assert job is not None and job.status is JobStatus.COMPLETED and job.result["attempt"] == 1
    await session.close()


class Stubborn(EchoConnector):
    """A connector whose call ignores cancellation for a while, then returns a result."""

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.5
        while loop.time() < end:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # a connector bug the runtime must survive
        return ConnectorResult(data={"late": True})

    async def cancel(self, job_id: str, token: str | None = None) -> None:
        return None


async def test_a_connector_call_that_will_not_stop_is_left_behind_and_the_timeout_is_written(
    queue: Queue, tmp_path: Path
) -> None:
    # The call runs in the job's task now, so a call that swallows the cancellation keeps that task; the
    # interrupter writes the outcome instead (as the run did when the call had a task of its own), and the
    # late result is dropped.
    runner = runner_of(queue, Stubborn(options=ConnectorOptions(), storage=LocalStorage(tmp_path)))
    runner.interrupt_grace_s = 0.1
    session, (claimed,) = await claim(queue, 1, timeout_s=0.2, max_retries=0)
    run = asyncio.create_task(runner.run(runner.lease_for(claimed)))
    await asyncio.wait_for(run, 30)
    job = await queue.get(claimed.job.id)
    assert job is not None and job.status is JobStatus.DEAD and job.result is None
    assert job.errors[-1]["details"]["kind"] == "timeout"
    assert (runner.completed, runner.failed, len(runner.leases), runner.interrupters) == (0, 1, 0, set())
    await session.close()


async def test_a_short_jobs_run_ends_when_its_completion_is_queued_and_the_round_trip_settles_it(
    queue: Queue, tmp_path: Path
) -> None:
    # Before: each run waited for its completion's answer (a future per job, and one more turn of its task once
    # the claim loop's round trip came back). Now the run ends when the claim loop has the completion, and the
    # round trip's answer counts the job and ends its lease.
    runner = runner_of(
        queue, EchoConnector(options=ConnectorOptions(concurrency=3), storage=LocalStorage(tmp_path))
    )
    completions = runner.writer.completions
    wakes: list[int] = []
    completions.carry(lambda: wakes.append(1))  # as the claim loop does while it runs
    session, claimed = await claim(queue, 3)
    leases = [runner.lease_for(c) for c in claimed]
    await asyncio.wait_for(asyncio.gather(*(runner.run(lease) for lease in leases)), 30)
    # Nothing sent yet: leases held. The carrier was woken once for the three (before: once per completion).
    assert (runner.completed, len(runner.leases), len(wakes)) == (0, 3, 1)
    batch = completions.take()
    completions.resolve(batch, await queue.complete_many([outcome for outcome, _ in batch]))  # the round trip
    assert (runner.completed, len(runner.leases)) == (3, 0)
    for c in claimed:
        job = await queue.get(c.job.id)
        assert job is not None and job.status is JobStatus.COMPLETED
    completions.carry(None)
    await session.close()


async def test_a_carried_completion_that_missed_redis_is_retried_until_written(
    queue: Queue, tmp_path: Path
) -> None:
    runner = runner_of(
        queue, EchoConnector(options=ConnectorOptions(concurrency=2), storage=LocalStorage(tmp_path))
    )
    completions = runner.writer.completions
    completions.carry(lambda: None)
    session, claimed = await claim(queue, 2)
    await asyncio.gather(*(runner.run(runner.lease_for(c)) for c in claimed))
    batch = completions.take()
    completions.resolve(batch, ConnectionError("Redis went away"))  # the round trip did not reach Redis
    assert len(runner.writer.retries) == 2 and len(runner.leases) == 2 and not runner.link.up
    completions.carry(None)  # the claim loop stopped: the retries' completions go out on their own
    await asyncio.wait_for(asyncio.gather(*runner.writer.retries), 30)
    assert (runner.completed, len(runner.leases)) == (2, 0) and runner.link.up
    for c in claimed:
        job = await queue.get(c.job.id)
        assert job is not None and job.status is JobStatus.COMPLETED
    await session.close()


class Gated(EchoConnector):
    """Echo that holds every call until `gate` opens (no timer of its own)."""

    gate: asyncio.Event

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        return await self._tasks.run(job, self._held(job))

    async def _held(self, job: ConnectorJob) -> ConnectorResult:
        await self.gate.wait()
        return ConnectorResult(data={"id": job.id})


async def test_running_jobs_share_one_timer_and_each_times_out_at_its_own_limit(
    queue: Queue, tmp_path: Path
) -> None:
    # Before: each job's call armed a timer handle of its own (4 jobs, 4 handles, each cancelled at its end).
    # Now one timer serves every running call's limit: set for the earliest deadline, then the next.
    connector = Gated(options=ConnectorOptions(concurrency=4), storage=LocalStorage(tmp_path))
    connector.gate = asyncio.Event()
    runner = runner_of(queue, connector)
    quick = [JobSpec(service="echo", timeout_s=0.3, max_retries=0) for _ in range(2)]
    slow = [JobSpec(service="echo", timeout_s=600) for _ in range(2)]
    await queue.submit_many(quick + slow)
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    claimed = await session.claim_many(4)
    by_limit = sorted(claimed, key=lambda c: c.job.timeout_s)
    loop = asyncio.get_running_loop()
    armed: list[Any] = []
    real = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) in (runner, runner.deadlines):
            armed.append(callback)
        return real(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign]
    try:
        runs = [asyncio.create_task(runner.run(runner.lease_for(c))) for c in by_limit]
        await asyncio.wait_for(asyncio.gather(*runs[:2]), 30)
        assert not any(run.done() for run in runs[2:])
        connector.gate.set()
        await asyncio.wait_for(asyncio.gather(*runs[2:]), 30)
    finally:
        del loop.call_at
    assert 1 <= len(armed) <= 2, armed
    jobs = [await queue.get(c.job.id) for c in by_limit]
    assert [j.status for j in jobs if j is not None] == [JobStatus.DEAD] * 2 + [JobStatus.COMPLETED] * 2
    assert all(j.errors[-1]["details"]["kind"] == "timeout" for j in jobs[:2] if j is not None)
    assert (runner.completed, runner.failed, len(runner.leases)) == (2, 2, 0)
    await session.close()


async def test_deadlines_drop_ended_calls_behind_a_long_one() -> None:
    from types import SimpleNamespace

    from appliance.worker.deadlines import SWEEP_AT, Deadlines

    expired: list[Any] = []
    deadlines = Deadlines(expired.append)
    long = SimpleNamespace(task=object(), timeout_s=600.0)
    deadlines.add(long)  # type: ignore[arg-type]
    for i in range(5000):  # short calls that ended, some with a limit of their own
        ended = SimpleNamespace(task=object(), timeout_s=600.0 if i % 2 else 1000.0 + i)
        deadlines.add(ended)  # type: ignore[arg-type]
        ended.task = None
    assert len(deadlines) <= 2 * SWEEP_AT + 1
    soon = SimpleNamespace(task=object(), timeout_s=0.05)
    deadlines.add(soon)  # type: ignore[arg-type]
    for _ in range(200):
        if expired:
            break
        await asyncio.sleep(0.01)
    assert expired == [soon]


async def test_a_one_slot_claim_loop_waits_for_its_slot_on_one_timer_not_one_per_job(
    queue: Queue, tmp_path: Path
) -> None:
    # At one slot the claim loop waits for the slot after every claim. Before: each wait armed a timer handle
    # of its own for the claim timeout and cancelled it (20 jobs, about 20 handles). Now one timer ends a wait
    # at the latest the claim timeout after it was armed, and serves the waits in a row.
    from appliance.worker.claimloop import ClaimLoop

    connector = EchoConnector(options=ConnectorOptions(concurrency=1), storage=LocalStorage(tmp_path))
    link = RedisLink()
    claims: ClaimLoop | None = None

    def freed() -> None:
        if claims is not None:
            claims.wake()

    leases = LeaseTable(on_free=freed)
    runner = JobRunner(connector, queue, leases, link, OutcomeWriter(queue, link), default_timeout_s=60)
    await queue.submit_many([JobSpec(service="echo") for _ in range(20)])
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    claims, signals = claim_loop(session, runner, link, capacity=1, claim_timeout_s=30)
    loop = asyncio.get_running_loop()
    armed: list[Any] = []
    real = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) in (claims, claims._changed):
            armed.append(callback)
        return real(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign]
    task = asyncio.create_task(claims.run())
    try:
        for _ in range(300):
            if runner.completed == 20:
                break
            await asyncio.sleep(0.02)
    finally:
        signals.draining.set()
        claims.wake()
        await asyncio.wait_for(task, 10)
        del loop.call_at
    assert runner.completed == 20
    # At most 2 (one per wait before: about 20). On Python 3.12+ none at all: the runs start eagerly and a no-op
    # job ends before the loop would wait for its slot.
    assert len(armed) <= 2 and (armed or sys.version_info >= (3, 12)), armed
    await session.close()


async def test_the_claim_loop_settles_and_starts_a_batch_as_one_change_of_the_lease_table(
    queue: Queue, tmp_path: Path
) -> None:
    # Before: every lease that ended in a round trip's answer, and every one it started, called the table's
    # callbacks on its own (the runtime's wake-up of the claim loop, which was running anyway, and of the
    # status): 2 calls per job. Now a round trip's batch is one change (and one free slot call) at most.
    from appliance.worker.claimloop import ClaimLoop

    jobs, slots = 60, 10
    calls = {"change": 0, "free": 0}
    loop: ClaimLoop | None = None

    def changed() -> None:
        calls["change"] += 1

    all_done = asyncio.Event()

    def freed() -> None:
        calls["free"] += 1
        if runner.completed >= jobs:
            all_done.set()
        if loop is not None:
            loop.wake()

    leases = LeaseTable(on_change=changed, on_free=freed)
    link = RedisLink()
    connector = EchoConnector(options=ConnectorOptions(concurrency=slots), storage=LocalStorage(tmp_path))
    runner = JobRunner(connector, queue, leases, link, OutcomeWriter(queue, link), default_timeout_s=60)
    await queue.submit_many([JobSpec(service="echo") for _ in range(jobs)])
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    loop, signals = claim_loop(session, runner, link, capacity=slots, claim_timeout_s=1)
    trips = 0
    finish_and_lease = session.finish_and_lease  # the claim loop's round trip

    async def counted(outcomes: Any, count: int) -> Any:
        nonlocal trips
        trips += 1
        return await finish_and_lease(outcomes, count)

    session.finish_and_lease = counted  # type: ignore[method-assign]
    running = asyncio.create_task(loop.run())
    await asyncio.wait_for(all_done.wait(), 30)
    signals.draining.set()
    loop.wake()
    await asyncio.wait_for(running, 30)
    assert runner.completed == jobs and len(leases) == 0
    # At most one change per round trip (its ends and starts together) and one free-slot call.
    assert calls["change"] <= trips and calls["free"] <= trips, (calls, trips)
    assert trips < jobs, trips
    await session.close()


async def test_a_completion_queued_while_the_claim_loop_reads_the_drain_flag_goes_without_a_wait_for_work(
    queue: Queue, tmp_path: Path
) -> None:
    # A job ended while the loop's turn awaited the drain flag, after it had taken the waiting completions: its
    # wake-up was cleared by the claim that followed (which found no job), and the loop then slept in
    # wait_for_work for the claim timeout with the completion waiting (later completions no longer wake it).
    from appliance.worker.drain import FleetDrain

    link = RedisLink()
    connector = EchoConnector(options=ConnectorOptions(concurrency=2), storage=LocalStorage(tmp_path))
    runner = runner_of(queue, connector)
    session, (claimed,) = await claim(queue, 1)  # the queue is empty now
    lease = runner.lease_for(claimed)
    written = asyncio.Event()

    class EndsAJobMeanwhile(FleetDrain):
        async def check(self, max_age_s: float = 0.0) -> bool:
            await asyncio.sleep(0)
            if not lease.finishing:
                lease.finishing = True
                runner.writer.complete_later(lease, {}, "{}", lambda _lease, ok: ok and written.set())
            return False

    loop, signals = claim_loop(
        session,
        runner,
        link,
        capacity=2,
        claim_timeout_s=60,
        fleet=EndsAJobMeanwhile(queue.client, "m", link),
    )
    running = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(written.wait(), 10)  # before: the claim timeout (60 s)
    finally:
        signals.draining.set()
        loop.wake()
        await asyncio.wait_for(running, 30)
    job = await queue.get(claimed.job.id)
    assert job is not None and job.status is JobStatus.COMPLETED
    await session.close()
