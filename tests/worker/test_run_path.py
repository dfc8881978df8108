"""A job's run as the claim loop starts it (issue 14: the worker's Python per job), in-process against a real
Redis: the run reads the claimed job without building it, calls its connector in its own task, and a stop request
or its timeout still interrupts that task. Counted and checked, never timed."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.queue import Capabilities, JobSpec, JobStatus, Queue, WorkerSession
from appliance.queue.jobbody import Claim
from appliance.worker.claimloop import start_task
from appliance.worker.connectors.base import ConnectorJob, ConnectorOptions, ConnectorResult, connector_job
from appliance.worker.connectors.echo import EchoConnector
from appliance.worker.execution import JobRunner
from appliance.worker.leases import Lease, LeaseTable, OutcomeWriter
from appliance.worker.outcome import StopReason
from appliance.worker.redislink import RedisLink
from appliance.worker.storage import LocalStorage
from tests.worker.test_runner_tasks import claim_loop


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    q = await Queue.connect(redis_url)
    yield q
    await q.close()


class Watched(EchoConnector):
    """Echo that records, per job, the task its call ran in and the ConnectorJob it got."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: dict[str, tuple[asyncio.Task[Any] | None, ConnectorJob]] = {}

    async def process(self, job: ConnectorJob, progress: Any) -> ConnectorResult:
        self.calls[job.id] = (asyncio.current_task(), job)
        return await super().process(job, progress)


def parts(queue: Queue, tmp_path: Path, slots: int) -> tuple[Watched, JobRunner, RedisLink]:
    connector = Watched(options=ConnectorOptions(concurrency=slots), storage=LocalStorage(tmp_path))
    link = RedisLink()
    runner = JobRunner(connector, queue, LeaseTable(), link, OutcomeWriter(queue, link), default_timeout_s=60)
    return connector, runner, link


async def until(check: Any, what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_the_claim_loops_runs_stop_on_request_and_at_their_timeout_in_their_own_task(
    queue: Queue, tmp_path: Path
) -> None:
    # The run path of the claim loop (the call awaited in the run's own task, the loop passed down) keeps what
    # the runtime relies on: `lease.task` is the job's own run task while its call runs, a stop request
    # interrupts the call there (the job ends cancelled), and the timeout does too (the job ends dead), while a
    # third job beside them completes with its payload echoed.
    connector, runner, link = parts(queue, tmp_path, 3)
    stopped = await queue.submit(JobSpec(service="echo", payload={"delay": 60}))
    timed = await queue.submit(JobSpec(service="echo", payload={"delay": 60}, timeout_s=0.3, max_retries=0))
    plain = await queue.submit(JobSpec(service="echo", payload={"n": 1}))
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    loop, signals = claim_loop(session, runner, link, capacity=3, claim_timeout_s=1)
    running = asyncio.create_task(loop.run())
    try:
        await until(lambda: stopped.id in connector.calls, "the job's call started")
        (lease,) = [one for one in runner.leases.all() if one.job_id == stopped.id]
        assert lease.task is not None and lease.task is loop.runs[lease.token]
        assert connector.calls[stopped.id][0] is lease.task  # the connector's call runs in the run's task
        await queue.cancel(stopped.id)
        runner.stop(lease, StopReason.CANCEL)  # what the heartbeat does when it learns of the request
        await until(lambda: len(runner.leases) == 0 and not loop.runs, "every run ended")
    finally:
        signals.draining.set()
        loop.wake()
        await asyncio.wait_for(running, 30)
    jobs = {job_id: await queue.get(job_id) for job_id in (stopped.id, timed.id, plain.id)}
    assert jobs[stopped.id] is not None and jobs[stopped.id].status is JobStatus.CANCELLED
    assert jobs[timed.id] is not None and jobs[timed.id].status is JobStatus.DEAD
    assert jobs[timed.id].errors[-1]["details"]["kind"] == "timeout"
    assert jobs[plain.id] is not None and jobs[plain.id].status is JobStatus.COMPLETED
    assert jobs[plain.id].result["echo"] == {"n": 1}
    assert (runner.completed, runner.failed) == (1, 1)
    await session.close()


async def test_a_run_gives_its_connector_the_claimed_jobs_values_without_building_the_job(
    queue: Queue, tmp_path: Path
) -> None:
    # Before: every claim built the full Job (28 fields, its Requirements) and the ClaimedJob, and the run copied
    # the payload for the connector. Now the runtime's Claim holds what a run reads; the Job stays unbuilt.
    connector, runner, link = parts(queue, tmp_path, 2)
    spec = JobSpec(service="echo", payload={"k": [1]}, customer_id="acme", timeout_s=30)
    submitted = await queue.submit(spec)
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    _, (claim,) = await session.finish_and_lease([], 1)
    assert type(claim) is Claim and claim._claimed is None
    lease = runner.lease_for(claim)
    runner.writer.completions.carry(lambda: None)  # as the claim loop does: the completion waits for a trip
    await runner.run(lease)
    _, cjob = connector.calls[submitted.id]
    expected = ConnectorJob(
        id=submitted.id,
        service="echo",
        payload={"k": [1]},
        attempt=1,
        timeout_s=30.0,
        customer_id="acme",
        token=claim.token,
    )
    assert cjob == expected and repr(cjob) == repr(expected) and cjob.payload is claim.payload
    assert claim._claimed is None  # nothing asked for the Job
    assert lease.snapshot()["service"] == "echo" and lease.shape == submitted.shape
    assert claim.job.id == submitted.id and claim.job.status is JobStatus.CLAIMED
    runner.writer.completions.carry(None)
    await until(lambda: runner.completed == 1, "the completion was written")
    await session.close()


def test_a_connector_job_made_for_a_run_is_what_its_constructor_makes() -> None:
    claim = Claim.__new__(Claim)
    claim.id, claim.service, claim.payload, claim.attempt = "j", "echo", {"a": 1}, 2
    claim.customer_id, claim.token = None, "t.1"
    made = connector_job(claim, 5.0)
    expected = ConnectorJob(id="j", service="echo", payload={"a": 1}, attempt=2, timeout_s=5.0, token="t.1")
    assert made == expected and repr(made) == repr(expected) and made.parents == {}
    assert made.parents is not connector_job(claim, 5.0).parents  # a dict of its own, as the factory makes
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.id = "other"  # type: ignore[misc]
    assert dataclasses.replace(made, parents={"p": 1}).parents == {"p": 1}


async def test_a_lease_of_a_claimedjob_reads_it_as_a_claim(queue: Queue) -> None:
    # Callers that hold a ClaimedJob (a multi-queue worker, tests) still make leases of it.
    submitted = await queue.submit({"service": "echo", "payload": {"x": 1}})
    claimed = await queue.claim("m-w0", [submitted.shape])
    assert claimed is not None
    lease = Lease(claimed, timeout_s=60)
    assert (lease.job_id, lease.token, lease.shape) == (submitted.id, claimed.token, submitted.shape)
    assert lease.claimed.claimed is claimed and lease.claimed.job is claimed.job
    lease.claimed.payload["x"] = 2  # the run's own copy
    assert claimed.job.payload == {"x": 1}


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need Python 3.12")
async def test_on_312_a_no_op_jobs_run_ends_in_its_first_step_and_leaves_no_task_behind(
    queue: Queue, tmp_path: Path
) -> None:
    # Python 3.12+: the claim loop starts each run eagerly, so a job that ends in its first step (a no-op echo)
    # is done when its turn of the loop returns, its completion waiting for the next round trip; `runs` keeps
    # only runs still going.
    connector, runner, link = parts(queue, tmp_path, 3)
    await queue.submit_many([JobSpec(service="echo") for _ in range(3)])
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    loop, _ = claim_loop(session, runner, link, capacity=3, claim_timeout_s=1)
    runner.writer.completions.carry(loop.wake)
    await loop.iteration()
    assert len(connector.calls) == 3 and loop.runs == {}
    assert len(runner.writer.completions.take()) == 3

    async def nothing() -> None:
        return None

    assert start_task(asyncio.get_running_loop(), nothing(), "x").done()
    runner.writer.completions.carry(None)
    await session.close()


async def test_a_stop_signal_during_a_claim_loops_turn_ends_the_loop_without_a_wait_for_work(
    queue: Queue, tmp_path: Path
) -> None:
    # Before: a stop signal (and its wake-up) that came while a turn awaited the drain flag's read was cleared
    # by the claim that followed; the claim found nothing, and the loop slept in wait_for_work for the claim
    # timeout (60 s here) before it saw the signal. Now a wake-up during the turn is looked at first.
    from appliance.worker.drain import FleetDrain

    _, runner, link = parts(queue, tmp_path, 1)
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    signals: Any = None

    class StopsMeanwhile(FleetDrain):
        async def check(self, max_age_s: float = 0.0) -> bool:
            await asyncio.sleep(0)
            signals.draining.set()  # what the worker's SIGTERM handler does, then it wakes the loop
            loop.wake()
            return False

    loop, signals = claim_loop(
        session, runner, link, capacity=1, claim_timeout_s=60, fleet=StopsMeanwhile(queue.client, "m", link)
    )
    await asyncio.wait_for(loop.run(), 20)  # before: the claim timeout, 60 s
    await session.close()
