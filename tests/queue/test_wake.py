"""Waking idle workers: a job wakes ONE idle worker, never all; one connection per process carries every session's
wake-ups and cancel requests. Real redis-server, real worker processes (tests/queue/idler.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from appliance.localredis import LocalRedis
from appliance.queue import Capabilities, Queue, QueueSettings, WorkerSession
from appliance.queue.keys import QueueKeys
from appliance.queue.scripts import ScriptSet

IDLER = str(Path(__file__).with_name("idler.py"))
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
KEYS = QueueKeys("default")


@asynccontextmanager
async def idlers(
    url: str, sessions: int, processes: int = 1, *extra: str, idle: int | None = None
) -> AsyncIterator[None]:
    """Idle worker processes; on entry `idle` sessions (default: all) are registered as idle. A session only
    knows the shapes that exist: each test submits a job first, which one of them takes."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, IDLER, url, str(p), str(sessions), *extra, env=ENV
        )
        for p in range(processes)
    ]
    client = aioredis.Redis.from_url(url)
    try:
        await until(lambda: client.hlen(KEYS.waiting), sessions * processes if idle is None else idle)
        yield
    finally:
        await client.aclose()
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def until(probe: Callable[[], Any], want: int, limit_s: float = 60) -> None:
    """Wait until `await probe()` == want (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while (got := int(await probe())) != want:
        assert time.monotonic() < deadline, f"still {got}, want {want}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def monitored(port: int) -> AsyncIterator[list[str]]:
    """The commands clients sent while inside (MONITOR, without the commands scripts ran)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"MONITOR\r\n")
    assert (await reader.readline()).strip() == b"+OK"
    lines: list[str] = []

    async def collect() -> None:
        while line := await reader.readline():
            text = line.decode().strip()
            if " lua] " not in text:
                lines.append(text)

    task = asyncio.create_task(collect())
    try:
        yield lines
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        writer.close()


def claims_in(lines: list[str]) -> int:
    sha = ScriptSet().sha("claim")
    return sum(1 for line in lines if f'"{sha}"' in line)


def subscribed_connections(clients: bytes | str) -> int:
    """Connections subscribed to a channel (CLIENT LIST's `sub=`)."""
    text = clients.decode() if isinstance(clients, bytes) else clients
    return sum(1 for line in text.splitlines() if " sub=0 " not in line and " sub=" in line)


async def test_one_job_into_thirty_idle_workers_is_claimed_once_with_a_few_commands(
    redis_server: LocalRedis, redis_url: str, aredis
) -> None:
    queue = await Queue.connect(redis_url)
    try:
        await queue.submit({"service": "echo"})
        async with idlers(redis_url, 15, 2):
            assert (
                subscribed_connections(await aredis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")) == 2
            )
            async with monitored(redis_server.port) as lines:
                job = await queue.submit({"service": "echo"})
                await until(lambda: aredis.llen("test:claims"), 2)
                await until(lambda: aredis.hlen(KEYS.waiting), 30)  # the worker is idle again
            assert claims_in(lines) == 1, "\n".join(lines)
            # submit, claim, record, complete, register as idle: nothing grows with the idle fleet.
            assert len(lines) <= 8, "\n".join(lines)
            assert (await aredis.lrange("test:claims", 0, -1))[1].endswith(job.id.encode())
    finally:
        await queue.close()


async def test_a_stream_and_bursts_into_idle_workers_of_three_classes_miss_no_job_and_wake_one_per_job(
    redis_server: LocalRedis, redis_url: str, aredis
) -> None:
    queue = await Queue.connect(redis_url)
    try:
        # The shapes exist before the workers start (t0..t3: every class serves two, each shape one or two).
        await queue.submit_many([{"service": "echo", "requirements": {"tags": [f"t{t}"]}} for t in range(4)])
        async with idlers(redis_url, 12, 2, "--classes", "3"):
            await until(lambda: aredis.llen("test:claims"), 4)
            await until(lambda: aredis.hlen(KEYS.waiting), 24)
            async with monitored(redis_server.port) as lines:
                jobs = 300
                for i in range(60):  # a paced stream: every worker idle between jobs
                    await queue.submit({"service": "echo", "requirements": {"tags": [f"t{i % 4}"]}})
                    await asyncio.sleep(0.01)
                for start in range(60, jobs, 30):  # bursts of 30 concurrent submits: wake-ups race the claims
                    await asyncio.gather(
                        *(
                            queue.submit({"service": "echo", "requirements": {"tags": [f"t{i % 4}"]}})
                            for i in range(start, start + 30)
                        )
                    )
                await until(lambda: aredis.llen("test:claims"), jobs + 4)
                await until(lambda: aredis.hlen(KEYS.waiting), 24)
            claimed = Counter(line.split()[1] for line in await aredis.lrange("test:claims", 0, -1))
            assert len(claimed) == jobs + 4 and max(claimed.values()) == 1
            stats = await queue.stats()
            assert stats.waiting == 0 and stats.active == 0
            # Waking every idle worker of a shape on each submit would take thousands of claims here.
            assert claims_in(lines) <= 2 * jobs, claims_in(lines)
    finally:
        await queue.close()


async def test_idle_workers_survive_a_redis_restart_on_one_connection(private_redis: LocalRedis) -> None:
    url = private_redis.url
    admin = aioredis.Redis.from_url(url)
    queue = await Queue.connect(url)
    try:
        await queue.submit({"service": "echo"})
        async with idlers(url, 10):
            clients = await admin.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
            assert subscribed_connections(clients) == 1  # ten sessions, one connection for their messages
            private_redis.restart()
            for client in (admin, queue.client):  # the test's own connections died with the server
                await client.connection_pool.disconnect()
            await until(lambda: admin.hlen(KEYS.waiting), 10)  # registered again after the restart
            job = await queue.submit({"service": "echo"})  # the restart lost everything: a new shape, too
            await until(lambda: admin.llen("test:claims"), 1)
            assert (await admin.lrange("test:claims", 0, -1))[0].endswith(job.id.encode())
            clients = await admin.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
            assert subscribed_connections(clients) == 1
    finally:
        await queue.close()
        await admin.aclose()


async def test_a_cancel_request_reaches_the_session_holding_the_job(redis_url: str, aredis) -> None:
    queue = await Queue.connect(redis_url)
    try:
        await queue.submit({"service": "echo"})
        async with idlers(redis_url, 6, 1, "--hold", idle=5):  # one holds the first job
            assert (
                subscribed_connections(await aredis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")) == 1
            )
            job = await queue.submit({"service": "echo"})
            await until(lambda: aredis.llen("test:claims"), 2)
            holder = (await aredis.lrange("test:claims", 0, -1))[1].decode().split()[0]
            assert await queue.cancel(job.id) == "requested"
            await until(lambda: aredis.llen("test:cancels"), 1)
            assert await aredis.lrange("test:cancels", 0, -1) == [f"{holder}|{job.id}".encode()]
    finally:
        await queue.close()


async def test_a_wake_up_for_a_worker_that_is_not_waiting_goes_on_to_one_that_is(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub's late pass-on (a woken session that never claimed) is out of play: only the direct one counts.
    monkeypatch.setattr("appliance.queue.hub.OWED_GRACE_S", 3600.0)
    echo = Capabilities(services=["echo"])
    await queue.submit({"service": "echo"})  # the shape exists before the workers start
    busy = await WorkerSession.open(queue, "w-busy", echo)
    idle = await WorkerSession.open(queue, "w-idle", echo)
    try:
        first = await busy.claim()
        assert first is not None
        await queue.complete(first.job.id, first.token, None)
        assert await busy.claim() is None
        # Registered first (the longest idle), then its worker stopped waiting (drained, its service down, ...).
        assert await busy.wait_for_work(0.01) is False and busy.registered
        assert await idle.claim() is None
        waiter = asyncio.create_task(idle.wait_for_work(60))
        await until(lambda: queue.client.hexists(queue.keys.waiting, "w-idle"), 1)
        job = await queue.submit({"service": "echo"})
        assert await waiter is True
        claimed = await idle.claim()
        assert claimed is not None and claimed.job.id == job.id
    finally:
        await idle.close()
        await busy.close()


def script_calls(lines: list[str]) -> list[str]:
    """The scripts the monitored commands called, by name (EVALSHA; other commands as themselves)."""
    scripts = ScriptSet()
    names = {scripts.sha(name): name for name in scripts.sources}
    called = []
    for line in lines:
        parts = line.split('"')
        command = parts[1].upper() if len(parts) > 1 else "?"
        called.append(names.get(parts[3], parts[3]) if command == "EVALSHA" and len(parts) > 3 else command)
    return called


async def test_completing_the_last_job_and_registering_as_idle_is_one_call(
    redis_server: LocalRedis, redis_url: str, aredis
) -> None:
    # Before: the worker's turn after its last job sent idle.lua, then complete.lua (2 commands: 4 per job in an
    # idle fleet). Now finish_claim.lua completes it, finds nothing and registers the worker in the same call.
    queue = await Queue.connect(redis_url)
    session = await WorkerSession.open(queue, "w1", Capabilities(services=["echo"]))
    try:
        job = await queue.submit({"service": "echo"})
        assert await session.wait_for_work(10)  # woken for it (the first claim had found nothing)
        claimed = await session.claim()
        assert claimed is not None and claimed.job.id == job.id
        # Loaded before: on a fresh server the first call would also send SCRIPT LOAD.
        await aredis.script_load(queue.scripts.sources["finish_claim_quiet"])
        async with monitored(redis_server.port) as lines:
            # The claim loop's turns after the job ends, as ClaimLoop.iteration makes them.
            assert await session.finish_and_claim([(job.id, claimed.token, {})], 1) == ([1], [])
            assert await session.finish_and_claim((), 1) == ([], [])
            assert await session.wait_for_work(0.01) is False
        assert script_calls(lines) == ["finish_claim_quiet"], script_calls(lines)
        assert session.registered
        assert await aredis.hget(queue.keys.waiting, "w1") is not None
        assert await aredis.zscore(queue.keys.idle(job.shape), "w1") is not None
        assert (await queue.require(job.id)).status.value == "completed"
    finally:
        await session.close()
        await queue.close()


async def test_a_job_submitted_right_after_the_combined_call_wakes_that_worker(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    session = await WorkerSession.open(queue, "w1", Capabilities(services=["echo"]))
    try:
        for _ in range(3):  # each round: the job wakes the worker that registered with its last completion
            job = await queue.submit({"service": "echo"})
            assert await session.wait_for_work(10)
            claimed = await session.claim()
            assert claimed is not None and claimed.job.id == job.id
            assert await session.finish_and_claim([(job.id, claimed.token, {})], 1) == ([1], [])
            assert session.registered
        nxt = await queue.submit({"service": "echo"})
        assert await session.wait_for_work(10)  # the wake-up came through the hub: nothing polled
        assert not session.registered  # the job spent the registration
        claimed = await session.claim()
        assert claimed is not None and claimed.job.id == nxt.id
    finally:
        await session.close()
        await queue.close()


async def test_a_job_waiting_when_the_last_job_completes_is_claimed_instead_of_registering(
    redis_url: str, aredis
) -> None:
    queue = await Queue.connect(redis_url)
    session = await WorkerSession.open(queue, "w1", Capabilities(services=["echo"]))
    try:
        first = await queue.submit({"service": "echo"})
        assert await session.wait_for_work(10)
        claimed = await session.claim()
        assert claimed is not None and claimed.job.id == first.id
        second = await queue.submit({"service": "echo"})  # no worker is idle: it wakes no one, it waits
        codes, more = await session.finish_and_claim([(first.id, claimed.token, {})], 1)
        assert codes == [1] and [c.job.id for c in more] == [second.id]
        assert not session.registered and await aredis.hget(queue.keys.waiting, "w1") is None
        # Its completion in turn finds nothing: registered, and a paused shape's job does not count as waiting.
        await queue.pauses.pause(shape=second.shape)
        third = await queue.submit({"service": "echo"})
        assert await session.finish_and_claim([(second.id, more[0].token, {})], 1) == ([1], [])
        assert session.registered and await aredis.hget(queue.keys.waiting, "w1") is not None
        await queue.pauses.resume(shape=second.shape)
        assert await session.wait_for_work(10)  # resuming the shape wakes an idle worker for its job
        claimed = await session.claim()
        assert claimed is not None and claimed.job.id == third.id
    finally:
        await session.close()
        await queue.close()


async def test_where_completions_go_alone_the_last_one_still_costs_two_calls_not_three(
    redis_server: LocalRedis, redis_url: str
) -> None:
    # Durable completions WAIT on their own (no replica here: each waits 1 ms, then goes on with a warning), so
    # the round trip cannot register the worker: it registers first (idle.lua), as before, then completes.
    producer = await Queue.connect(redis_url)  # a durable submit without a replica would raise NotDurable
    queue = await Queue.connect(redis_url, settings=QueueSettings(durable_replicas=1, durable_timeout_ms=1))
    session = await WorkerSession.open(queue, "w1", Capabilities(services=["echo"]))
    try:
        job = await producer.submit({"service": "echo"})
        assert await session.wait_for_work(10)
        claimed = await session.claim()
        assert claimed is not None and claimed.job.id == job.id
        for name in ("idle", "complete"):
            await queue.client.script_load(queue.scripts.sources[name])
        async with monitored(redis_server.port) as lines:
            assert await session.finish_and_claim([(job.id, claimed.token, {})], 1) == ([1], [])
            assert await session.wait_for_work(0.01) is False
        scripts = [c for c in script_calls(lines) if c in queue.scripts.sources]
        assert scripts == ["idle", "complete"], script_calls(lines)
        assert session.registered
    finally:
        await session.close()
        await queue.close()
        await producer.close()


async def test_the_round_trip_registers_the_worker_through_fcall_and_evalsha(queue: Queue) -> None:
    session = await WorkerSession.open(queue, "w1", Capabilities(services=["echo"]))
    try:
        job = await queue.submit({"service": "echo"})
        assert await session.wait_for_work(10)
        claimed = await session.claim()
        assert claimed is not None
        assert await session.finish_and_claim([(job.id, claimed.token, {})], 1) == ([1], [])
        assert session.registered
        assert await queue.client.hget(queue.keys.waiting, "w1") == session.hub.channel  # type: ignore[union-attr]
        assert await queue.client.zscore(queue.keys.idle(job.shape), "w1") is not None
    finally:
        await session.close()
    assert await queue.client.hget(queue.keys.waiting, "w1") is None  # closing deregisters it
    assert await queue.client.zscore(queue.keys.idle(job.shape), "w1") is None
