"""The worker runtime's parts, in-process against a real Redis: slots, outcomes, progress, leases, wiring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.identity import SlotError, parse_slot, slot_from_arguments
from appliance.localredis import LocalRedis
from appliance.queue import Capabilities, ClaimedJob, JobStatus, Queue, QueueSettings, WorkerSession
from appliance.queue.errors import LeaseLost
from appliance.worker.connectors.base import (
    ConnectorCapabilities,
    ConnectorOptions,
    JobCancelled,
    PermanentError,
    RetryableError,
)
from appliance.worker.housekeeping import Reaper
from appliance.worker.leases import Heartbeater, Lease, LeaseTable, OutcomeWriter
from appliance.worker.outcome import OutcomeKind, StopReason, decide, failure_of
from appliance.worker.progress import ProgressForwarder
from appliance.worker.redislink import RedisLink
from appliance.worker.status import Phase, Snapshot
from appliance.worker.wiring import WiringError, build_capabilities, worker_parts

# --- identity ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slot", "connector", "index", "gpu"),
    [
        ("gpu0", "comfyui", 0, True),
        ("gpu12", "comfyui", 12, True),
        ("echo0", "echo", 0, False),
        ("openai1", "openai", 1, False),
        ("my_conn3", "my_conn", 3, False),
    ],
)
def test_slots_parse_into_connector_and_index(slot: str, connector: str, index: int, gpu: bool) -> None:
    parsed = parse_slot(slot)
    assert (parsed.connector, parsed.index, parsed.gpu, parsed.name) == (connector, index, gpu, slot)
    assert parsed.worker_id("m1") == f"m1-{slot}"


@pytest.mark.parametrize("slot", ["gpu", "echo", "0echo", "comfyui0", "gpu-1", "open ai1", ""])
def test_bad_slots_are_refused_by_name(slot: str) -> None:
    with pytest.raises(SlotError, match="slot"):
        parse_slot(slot)


def test_exactly_one_way_to_name_the_slot() -> None:
    assert slot_from_arguments(slot=None, gpu=2, connector=None, index=None).name == "gpu2"
    assert slot_from_arguments(slot=None, gpu=None, connector="openai", index=None).name == "openai0"
    for kwargs in (
        {"slot": "echo0", "gpu": 1, "connector": None, "index": None},
        {"slot": None, "gpu": None, "connector": None, "index": None},
        {"slot": None, "gpu": 0, "connector": None, "index": 1},
        {"slot": None, "gpu": None, "connector": "comfyui", "index": None},
    ):
        with pytest.raises(SlotError):
            slot_from_arguments(**kwargs)  # type: ignore[arg-type]


# --- outcomes ---------------------------------------------------------------------------------------------------


def test_outcome_decisions() -> None:
    assert decide({"x": 1}, None, None).kind is OutcomeKind.COMPLETE
    assert decide({"x": 1}, None, StopReason.HANDBACK).kind is OutcomeKind.COMPLETE  # done is done
    assert decide({"x": 1}, None, StopReason.LOST).kind is OutcomeKind.DROP  # never write over a lost lease
    assert decide(None, JobCancelled(), StopReason.HANDBACK).kind is OutcomeKind.RELEASE
    assert decide(None, JobCancelled(), StopReason.CANCEL).kind is OutcomeKind.CANCELLED
    assert decide(None, asyncio.CancelledError(), None).kind is OutcomeKind.RELEASE
    timeout = decide(None, JobCancelled(), StopReason.TIMEOUT, timeout_s=2.5)
    assert timeout.kind is OutcomeKind.FAIL and timeout.retryable and timeout.details["kind"] == "timeout"
    assert timeout.details["timeout_s"] == 2.5


def test_failure_classification() -> None:
    limited = failure_of(RetryableError("slow down", code="rate_limited", details={"retry_after_s": 7}))
    assert limited.retryable and limited.details == {
        "kind": "rate_limited",
        "code": "rate_limited",
        "retry_after_s": 7,
    }
    bad = failure_of(PermanentError("no such model", code="not_found", details={"status": 404}))
    assert not bad.retryable and bad.error == "no such model" and bad.details["status"] == 404
    assert failure_of(ConnectionResetError("peer")).retryable
    assert failure_of(TimeoutError()).retryable
    assert not failure_of(KeyError("prompt")).retryable
    assert failure_of(RuntimeError("bug")).retryable  # bounded by max_retries, history kept


# --- status -----------------------------------------------------------------------------------------------------


def test_status_lines() -> None:
    def snap(phase: Phase, jobs: list[dict[str, object]] | None = None) -> Snapshot:
        return Snapshot(
            phase=phase,
            connector="comfyui",
            slot="gpu0",
            concurrency=1,
            service_healthy=True,
            drained=False,
            redis_ok=True,
            jobs=jobs or [],
        )

    assert snap(Phase.IDLE).text() == "idle, 0 jobs done"
    done = Snapshot(Phase.IDLE, "echo", "echo0", 1, True, False, True, [], done=1, failed=2)
    assert done.text() == "idle, 1 job done, 2 failed"
    assert snap(Phase.RUNNING, [{"id": "42", "progress": 57.4}]).text() == "running job 42 (57%)"
    assert snap(Phase.DRAINING).text() == "draining"
    assert snap(Phase.SERVICE_DOWN).text() == "service down: comfyui not answering"
    assert snap(Phase.REDIS_DOWN).text() == "redis unreachable, retrying"
    assert snap(Phase.DRAINED).text() == "drained, 0 jobs"
    record = snap(Phase.RUNNING, [{"id": "42", "progress": 57.4}]).record()
    assert (
        record["state"] == "running"
        and record["current_job_id"] == "42"
        and record["jobs"][0]["progress"] == 57.4
    )


# --- wiring -----------------------------------------------------------------------------------------------------


def test_connector_parts_and_secrets(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-secret-value\n")
    settings = load_settings(
        env={
            "APPLIANCE_CONNECTORS__OPENAI__API_KEY_FILE": str(key_file),
            "APPLIANCE_CONNECTORS__OPENAI__CONCURRENCY": "3",
            "APPLIANCE_COMFYUI__BASE_PORT": "9100",
        }
    ).settings
    parts = worker_parts(settings, parse_slot("openai1"))
    assert parts.options.api_key == "sk-secret-value" and parts.concurrency == 3
    assert "sk-secret-value" not in repr(parts)
    assert worker_parts(settings, parse_slot("openai0"), concurrency=5).concurrency == 5
    gpu = worker_parts(settings, parse_slot("gpu2"))
    assert (
        gpu.connector == "comfyui"
        and gpu.options.base_url == "http://127.0.0.1:9102"
        and gpu.concurrency == 1
    )


def test_connector_options_are_typed_once_when_wired_and_a_wrong_one_is_named() -> None:
    # Each connector's own options are a typed model, validated when the worker is wired: "no" is False (a
    # bare bool("no") was True and copied every output), and a value of the wrong type names its key.
    good = load_settings(
        env={"APPLIANCE_CONNECTORS__REPLICATE__EXTRA": '{"copy_outputs": "no", "poll_max_s": "2"}'}
    ).settings
    options = worker_parts(good, parse_slot("replicate0")).options
    assert type(options).__name__ == "ReplicateOptions"
    assert options.copy_outputs is False and options.poll_max_s == 2.0  # type: ignore[attr-defined]
    bad = load_settings(env={"APPLIANCE_CONNECTORS__REPLICATE__EXTRA": '{"poll_max_s": "fast"}'}).settings
    with pytest.raises(WiringError) as info:
        worker_parts(bad, parse_slot("replicate0"))
    assert str(info.value).startswith("connectors.replicate: poll_max_s: ") and "\n" not in str(info.value)


def test_capabilities_merge_service_reports_with_config() -> None:
    settings = load_settings(
        env={
            "APPLIANCE_MACHINE__TAGS": '["fast"]',
            "APPLIANCE_MACHINE__REGION": "eu",
            "APPLIANCE_WORKER__CAPABILITIES__CUSTOMER_ISOLATION": "strict",
            "APPLIANCE_WORKER__CAPABILITIES__ALLOWED_CUSTOMERS": '["acme"]',
        }
    ).settings
    found = ConnectorCapabilities(
        services=["comfyui"], models={"comfyui": ["sdxl.safetensors"]}, gpu_memory_gb=24
    )
    caps = build_capabilities(settings, found, ram_gb=64, cpu_cores=16)
    assert (
        caps.services == ["comfyui"]
        and caps.gpu_memory_gb == 24
        and caps.models == {"comfyui": ["sdxl.safetensors"]}
    )
    assert caps.region == "eu" and caps.tags == ["fast"] and caps.customer_isolation.value == "strict"
    assert caps.allowed_customers == ["acme"] and caps.ram_gb == 64 and caps.cpu_cores == 16


def test_capabilities_carry_gpu_count_and_machine_type_of_the_slot() -> None:
    settings = load_settings(env={}).settings
    gpu = build_capabilities(settings, ConnectorCapabilities(services=["comfyui"]), slot=parse_slot("gpu1"))
    assert (gpu.gpu_count, gpu.machine_type) == (1, "gpu")
    api = build_capabilities(settings, ConnectorCapabilities(services=["echo"]), slot=parse_slot("echo0"))
    assert (api.gpu_count, api.machine_type) == (0, "api")
    # A worker whose service runs on two GPUs says so in the config.
    two = load_settings(env={"APPLIANCE_WORKER__CAPABILITIES__GPU_COUNT": "2"}).settings
    caps = build_capabilities(two, ConnectorCapabilities(services=["comfyui"]), slot=parse_slot("gpu0"))
    assert caps.gpu_count == 2


# --- progress, leases, outcomes against Redis -------------------------------------------------------------------


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    q = await Queue.connect(redis_url)
    yield q
    for session in SESSIONS.pop(id(q), []):
        await session.close()
    await q.close()


SESSIONS: dict[int, list[WorkerSession]] = {}


async def _claim(queue: Queue, payload: dict[str, object] | None = None) -> tuple[WorkerSession, ClaimedJob]:
    job = await queue.submit({"service": "echo", "payload": payload or {}})
    session = await WorkerSession.open(queue, "m-w0", Capabilities(services=["echo"]))
    SESSIONS.setdefault(id(queue), []).append(session)
    claimed = await session.claim()
    assert claimed is not None and claimed.job.id == job.id
    return session, claimed


async def test_progress_is_coalesced_and_the_last_value_always_written(queue: Queue) -> None:
    _, claimed = await _claim(queue)
    writes: list[float] = []

    async def write(percent: float, message: str | None) -> bool:
        writes.append(percent)
        return await queue.progress(claimed.job.id, claimed.token, percent, message)

    fwd = ProgressForwarder(
        write, RedisLink(), on_cancel=lambda: None, on_lost=lambda: None, min_interval_s=0.05
    )
    for i in range(1, 201):
        await fwd.report(i / 2)  # 0.5 % steps, far faster than the throttle
        await asyncio.sleep(0.001)
    await fwd.flush()
    assert writes[-1] == 100.0 and 1 < len(writes) < 100
    # Steps under min_step are skipped, except the one that reaches 100 % (always written; under load the write
    # before it may have been 99.5).
    assert all(b - a >= 1.0 or b == 100.0 for a, b in zip(writes, writes[1:], strict=False))
    job = await queue.get(claimed.job.id)
    assert job is not None and job.progress is not None and job.progress["percent"] == 100.0
    assert job.status is JobStatus.RUNNING


async def test_heartbeat_reports_cancel_and_lost(queue: Queue) -> None:
    session, claimed = await _claim(queue)
    table = LeaseTable()
    lease = Lease(claimed, timeout_s=60)
    table.add(lease)
    events: list[str] = []
    beat = Heartbeater(
        session,
        table,
        RedisLink(),
        interval_s=1,
        on_cancel=lambda le: events.append("cancel"),
        on_lost=lambda le: events.append("lost"),
    )
    assert await beat.beat() and events == []
    assert await queue.cancel(lease.job_id) == "requested"
    assert await beat.beat() and events == ["cancel"]
    await queue.client.zadd(queue.keys.leases, {lease.job_id: 0})
    await queue.reap(force=True)
    assert await beat.beat() and events[-1] == "lost"


async def test_an_outcome_waits_for_redis_and_is_written_when_it_returns(tmp_path: Path) -> None:
    server = LocalRedis(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        queue = await Queue.connect(server.url)
        session, claimed = await _claim(queue, {"k": 1})
        SESSIONS.pop(id(queue))
        await session.close(deregister=False)
        lease = Lease(claimed, timeout_s=60)
        went_down = asyncio.Event()
        link = RedisLink(on_change=went_down.set)
        writer = OutcomeWriter(queue, link)
        server.kill()
        write = asyncio.create_task(writer.write(lease, decide({"done": True}, None, None)))
        await asyncio.wait_for(went_down.wait(), 30)
        assert not write.done() and not link.up
        server.start()
        assert await write is True and link.up
        job = await queue.get(lease.job_id)
        assert job is not None and job.status is JobStatus.COMPLETED and job.result == {"done": True}
        # Written once: a second write of the same lease is refused by its fencing token.
        with pytest.raises(LeaseLost):
            await queue.complete(lease.job_id, lease.token, {"again": True})
        await queue.close()
    finally:
        server.cleanup()


async def test_an_outcome_over_a_lost_lease_is_not_written(queue: Queue) -> None:
    _, claimed = await _claim(queue)
    lease = Lease(claimed, timeout_s=60)
    await queue.client.zadd(queue.keys.leases, {lease.job_id: 0})
    await queue.reap(force=True)
    assert await OutcomeWriter(queue, RedisLink()).write(lease, decide({"x": 1}, None, None)) is False
    job = await queue.get(lease.job_id)
    assert job is not None and job.status is JobStatus.PENDING and job.result is None


# --- attempts of one job on one worker --------------------------------------------------------------------------


async def test_stopping_a_lost_attempt_never_cancels_the_next_attempt_on_the_same_worker(
    queue: Queue, tmp_path: Path
) -> None:
    # Attempt 1's lease expires while it runs (a heartbeat slower than the lease, as lease_ms=1000 with
    # heartbeat_interval_ms=5000 allowed), the reaper puts the job back and this same worker claims attempt 2.
    # Stopping attempt 1 must not cancel attempt 2: the job was never cancelled and must complete.
    from appliance.worker.connectors.echo import EchoConnector
    from appliance.worker.execution import JobRunner
    from appliance.worker.storage import LocalStorage

    connector = EchoConnector(options=ConnectorOptions(concurrency=2), storage=LocalStorage(tmp_path))
    table = LeaseTable()
    link = RedisLink()
    runner = JobRunner(connector, queue, table, link, OutcomeWriter(queue, link), default_timeout_s=60)
    runner.interrupt_grace_s = 5
    session, first = await _claim(queue, {"delay": 2.0})
    lease1 = runner.lease_for(first)
    run1 = asyncio.create_task(runner.run(lease1))
    await asyncio.sleep(0.3)  # attempt 1 is under way
    await queue.client.zadd(queue.keys.leases, {first.job.id: 0})
    assert (await queue.reap(force=True)).requeued == 1
    second = await session.claim()
    assert second is not None and second.job.id == first.job.id and second.attempt == 2
    lease2 = runner.lease_for(second)
    run2 = asyncio.create_task(runner.run(lease2))
    assert len(table) == 2 and table.current(first.job.id) is lease2
    events: list[tuple[str, int]] = []
    beat = Heartbeater(
        session,
        table,
        link,
        interval_s=1,
        on_cancel=lambda le: events.append(("cancel", le.claimed.attempt)),
        on_lost=lambda le: (events.append(("lost", le.claimed.attempt)), runner.stop(le, StopReason.LOST)),
    )
    assert await beat.beat()
    assert events == [("lost", 1)]  # the older attempt is known lost; the newer one is renewed
    await asyncio.wait_for(run1, 30)
    await asyncio.wait_for(run2, 30)
    job = await queue.get(first.job.id)
    assert job is not None and job.status is JobStatus.COMPLETED, (job.status if job else None, job.errors)
    assert job.result["attempt"] == 2 and runner.completed == 1


async def test_job_tasks_cancel_only_the_named_attempt() -> None:
    from appliance.worker.connectors.base import ConnectorJob
    from appliance.worker.connectors.tasks import Attempts

    tasks = Attempts()
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "done"

    one = ConnectorJob(id="j", service="echo", payload={}, attempt=1, timeout_s=None, token="t1")
    two = ConnectorJob(id="j", service="echo", payload={}, attempt=2, timeout_s=None, token="t2")
    run1 = asyncio.create_task(tasks.run(one, work()))
    run2 = asyncio.create_task(tasks.run(two, work()))
    await asyncio.sleep(0)
    assert [a.token for a in tasks.cancel("j", "t1")] == ["t1"]
    with pytest.raises(JobCancelled):
        await run1
    assert "j" in tasks  # attempt 2 is still registered after attempt 1 ended
    gate.set()
    assert await run2 == "done"


async def test_a_heartbeat_racing_the_completion_does_not_claim_the_outcome_is_lost(
    queue: Queue, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The outcome's complete landed (ending the lease) while a heartbeat carrying the job was in flight: the
    # heartbeat answers "lost". The worker logged "its outcome will not be written" and then the job completed.
    from appliance.worker.connectors.echo import EchoConnector
    from appliance.worker.execution import JobRunner
    from appliance.worker.runtime import Worker
    from appliance.worker.storage import LocalStorage

    settings = load_settings(
        None, env={"APPLIANCE_REDIS_URL": redis_url, "APPLIANCE_MACHINE_ID": "m"}
    ).settings
    storage = LocalStorage(tmp_path)
    connector = EchoConnector(options=ConnectorOptions(), storage=storage)
    worker = Worker(
        settings,
        parse_slot("echo0"),
        connection=settings.redis_connection(),
        connector=connector,
        storage=storage,
        env={},
    )
    writer = OutcomeWriter(queue, worker.link)
    worker.runner = JobRunner(connector, queue, worker.leases, worker.link, writer, default_timeout_s=60)
    session, finished = await _claim(queue)
    _, running = await _claim(queue)
    done = worker.runner.lease_for(finished)
    still = worker.runner.lease_for(running)
    done.finishing = True  # its connector call ended; the outcome is being written
    beat = Heartbeater(
        session,
        worker.leases,
        worker.link,
        interval_s=1,
        on_cancel=worker._cancel_requested,
        on_lost=worker._lease_lost,
    )
    tokens = worker.leases.tokens()
    await queue.complete(finished.job.id, finished.token, {"ok": True})  # the write landed ...
    await queue.client.zadd(queue.keys.leases, {running.job.id: 0})  # ... and another lease really is lost
    await queue.reap(force=True)
    with caplog.at_level(logging.DEBUG, logger="appliance.worker.runtime"):
        assert await beat.beat()  # ... before its reply: the heartbeat no longer finds either lease
    assert worker.leases.tokens() == tokens
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        f"job {running.job.id}: lease lost (heartbeat); stopping it, its outcome will not be written"
    ]
    assert done.stop is None and still.stop is StopReason.LOST
    job = await queue.get(finished.job.id)
    assert job is not None and job.status is JobStatus.COMPLETED


# --- the reaper: woken by deadlines, not a polling interval -----------------------------------------------------


async def test_reaper_wakes_for_a_lease_deadline_it_learned_and_for_a_retry_it_scheduled(
    redis_url: str,
) -> None:
    """With an hour-long maximum sleep, only the deadlines reported by the queue (and the retry this process
    scheduled) can wake the reaper: a dead worker's job and a failed job both come back."""
    q = await Queue.connect(
        redis_url, settings=QueueSettings(lease_ms=1_000, reaper_interval_ms=100, retry_base_ms=500)
    )
    reaper = Reaper(q, RedisLink(), interval_s=0.1, max_sleep_s=3600)
    q.on_retry_scheduled = reaper.due_in
    task = asyncio.create_task(reaper.run())
    try:
        dead = await q.submit({"service": "echo"})
        assert await q.claim("w-dead", [dead.shape]) is not None  # never renewed: its worker is gone
        # The reaper may have read the queue before this lease existed (it then sleeps the maximum): a second
        # job failing with a retry wakes it (due_in), and from then on it knows the lease's deadline too.
        flaky = await q.submit({"service": "echo"})
        claimed = await q.claim("w-alive", [flaky.shape])
        assert claimed is not None and claimed.job.id == flaky.id
        assert await q.fail(flaky.id, claimed.token, "flaky", retryable=True) is JobStatus.PENDING

        async def back(job_id: str) -> bool:
            for _ in range(600):
                if (await q.get(job_id)).status is JobStatus.PENDING and await q.client.zscore(  # type: ignore[union-attr]
                    q.keys.ready(dead.shape), job_id
                ) is not None:
                    return True
                await asyncio.sleep(0.05)
            return False

        assert await back(flaky.id), "the retry never went back in line"
        assert await back(dead.id), "the expired lease was never reaped"
        assert (await q.get(dead.id)).errors[0]["kind"] == "lease_expired"  # type: ignore[union-attr]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await q.close()
