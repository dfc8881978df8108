"""Durable acknowledgement (`queue.durable_replicas`): a submit or completion returns once `WAIT` saw the
replicas hold it, else raises NotDurable; with it on, every acknowledged job survives a `kill -9` failover."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from appliance.config import Settings
from appliance.localredis import LocalRedis
from appliance.queue import NotDurable, Queue
from appliance.queue.factory import connect_queue
from tests.cluster.conftest import needs_sentinel
from tests.cluster.servers import SentinelSet, wait_until
from tests.cluster.test_sentinel import QUEUE, fail_over, sentinel_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def replicated() -> Iterator[tuple[LocalRedis, LocalRedis]]:
    primary = LocalRedis(extra_args=["--repl-diskless-sync-delay", "0"]).start()
    replica = LocalRedis(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    with redis.Redis(port=replica.port, decode_responses=True) as r:
        wait_until(lambda: r.info("replication").get("master_link_status") == "up", "the replica to sync")
    yield primary, replica
    if replica.process is not None and replica.process.poll() is None:
        replica.process.send_signal(signal.SIGCONT)
    replica.cleanup()
    primary.cleanup()


async def test_a_durable_submit_and_completion_wait_for_the_replica(
    replicated: tuple[LocalRedis, LocalRedis], caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = replicated

    def durable(timeout_ms: int) -> Settings:
        return Settings.model_validate(
            {
                "redis": {"url": primary.url},
                "queue": {"durable_replicas": 1, "durable_timeout_ms": timeout_ms},
            }
        )

    fast = await connect_queue(Settings.model_validate({"redis": {"url": primary.url}}))
    # A generous wait where the replica answers (the machine is loaded); a short one where it cannot.
    patient, careful = await connect_queue(durable(30_000)), await connect_queue(durable(300))
    try:
        job = await patient.submit({"service": "echo"})
        claimed = await patient.claim("w1", [job.shape])
        assert claimed is not None
        await patient.complete(job.id, claimed.token, {"ok": 1})
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)  # a replica that cannot confirm anything
        try:
            with pytest.raises(NotDurable) as caught:
                await careful.submit({"service": "echo"})
            assert caught.value.confirmed == 0 and len(caught.value.job_ids) == 1
            # Written all the same (on the primary only): the caller knows which id to look for.
            assert await careful.get(caught.value.job_ids[0]) is not None
            # Without the setting a submit returns at once, replica or not.
            assert await fast.submit({"service": "echo"})
            again = await careful.claim("w1", [job.shape])
            assert again is not None
            await careful.complete(again.job.id, again.token, {"ok": 2})  # waits, then warns: written
            assert (
                "completed " + again.job.id + ", but written on the primary, but only 0 of 1" in caplog.text
            )
        finally:
            replica.process.send_signal(signal.SIGCONT)
    finally:
        for queue in (fast, patient, careful):
            await queue.close()


@needs_sentinel
async def test_every_acknowledged_job_survives_a_failover(tmp_path: Path) -> None:
    sentinels = SentinelSet(tmp_path).start()
    queue: Queue | None = None
    try:
        queue = await connect_queue(sentinel_settings(sentinels, durable_replicas=1, durable_timeout_ms=500))
        acknowledged: list[str] = []
        refused = 0
        stop = asyncio.Event()

        async def submit_steadily() -> None:
            nonlocal refused
            assert queue is not None
            while not stop.is_set():
                try:
                    acknowledged.append((await queue.submit({"service": "echo"})).id)
                except Exception:  # unreachable during the failover, NotDurable after it (no replica left)
                    refused += 1
                    await asyncio.sleep(0.05)

        submitter = asyncio.create_task(submit_steadily())
        await asyncio.to_thread(wait_until, lambda: len(acknowledged) >= 50, "50 acknowledged submits")
        await fail_over(sentinels)
        stop.set()
        await submitter
        promoted = sentinels.replica_client()
        present = [j for j in acknowledged if promoted.hexists(f"appliance:{{{QUEUE}}}:state", j)]
        print(
            f"{len(acknowledged)} acknowledged, {refused} refused, {len(present)} present after the failover"
        )
        assert len(acknowledged) >= 50 and present == acknowledged
    finally:
        if queue is not None:
            await queue.close()
        sentinels.cleanup()
