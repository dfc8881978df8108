"""The scripts on a real 3-node Redis Cluster: every key they touch is declared and hashes to one slot."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from appliance.config.queue import ScriptsMode
from appliance.localredis import LocalRedis, free_port
from appliance.queue import Capabilities, JobStatus, LeaseLost, Queue, QueueSettings, WorkerSession

pytestmark = pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli (redis-tools) not installed"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[LocalRedis]]:
    nodes = []
    try:
        for _ in range(3):
            nodes.append(
                LocalRedis(
                    extra_args=[
                        # An explicit bus port: the default (port + 10000) can fall outside the port range.
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-node-timeout",
                        "2000",
                    ]
                ).start()
            )
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for _ in range(100):
            info = subprocess.run(
                ["redis-cli", "-p", str(nodes[0].port), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" in info:
                break
            subprocess.run(["sleep", "0.1"])
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


@pytest.mark.parametrize("use_functions", [True, False])
async def test_every_script_runs_on_a_cluster(cluster: list[LocalRedis], use_functions: bool) -> None:
    if use_functions:  # the deployer loads the library on every primary (`appliance redis setup`)
        from redis.asyncio.cluster import RedisCluster

        from appliance.queue.scripts import ScriptSet

        admin = RedisCluster.from_url(f"redis://127.0.0.1:{cluster[0].port}", decode_responses=True)
        await admin.initialize()
        assert await ScriptSet(cluster=True).install(admin) == "loaded"
        await admin.aclose()
    queue = await Queue.connect(
        f"redis://127.0.0.1:{cluster[0].port}",
        cluster=True,
        queue_name=f"cl{int(use_functions)}",
        settings=QueueSettings(
            lease_ms=1000,
            retry_base_ms=0,
            retry_max_ms=0,
            scripts=ScriptsMode.FUNCTIONS if use_functions else ScriptsMode.EVAL,
        ),
    )
    try:
        assert queue.scripts.use_functions is use_functions
        jobs = await queue.submit_many(
            [
                {"service": "echo", "payload": {"i": i}, "requirements": {"tags": [f"t{i % 3}"]}}
                for i in range(6)
            ]
        )
        session = await WorkerSession.open(
            queue, "cw", Capabilities(services=["echo"], tags=["t0", "t1", "t2"])
        )
        try:
            first = await session.claim()
            assert await session.heartbeat({first.job.id: first.token}) == {first.job.id: "ok"}
            await queue.progress(first.job.id, first.token, 50)
            await queue.complete(first.job.id, first.token, {"ok": True})
            second = await session.claim()
            assert await queue.fail(second.job.id, second.token, "x", retryable=True) is JobStatus.PENDING
            third = await session.claim()
            await queue.release(third.job.id, third.token)
            assert await queue.cancel(jobs[5].id) == "cancelled"
            fourth = await session.claim()
            await asyncio.sleep(1.1)
            result = await queue.reap(force=True)
            assert result.requeued == 1
            with pytest.raises(LeaseLost):
                await queue.complete(fourth.job.id, fourth.token, {})
            assert await queue.return_jobs_of_worker("cw") == 0
            stats = await queue.stats()
            assert stats.totals["completed"] == 1 and stats.waiting == 4
            assert (await queue.get(first.job.id)).status is JobStatus.COMPLETED
        finally:
            await session.close()
    finally:
        await queue.close()


async def test_schedule_scripts_run_on_a_cluster(cluster: list[LocalRedis]) -> None:
    queue = await Queue.connect(f"redis://127.0.0.1:{cluster[0].port}", cluster=True, queue_name="clsched")
    try:
        start = await queue.server_time_ms() + 5_000
        await queue.schedules.add({"id": "s", "every_s": 1, "start_at_ms": start, "job": {"service": "echo"}})
        result = await queue.schedules.materialise(now_ms=start + 1_000)
        assert result.submitted == 2 and await queue.client.hexists(queue.keys.state, f"s:{start}")
        await queue.schedules.pause("s")
        await queue.schedules.resume("s")
        assert [s.id for s in await queue.schedules.list()] == ["s"]
        await queue.schedules.remove("s")
        assert await queue.schedules.list() == []
    finally:
        await queue.close()


async def test_fair_share_and_pause_keys_on_a_cluster(cluster: list[LocalRedis]) -> None:
    queue = await Queue.connect(
        f"redis://127.0.0.1:{cluster[0].port}",
        cluster=True,
        queue_name="clfair",
        settings=QueueSettings(claim_slack_ms=0),
    )
    try:
        await queue.limits.set("acme", weight=0.001)
        await queue.limits.set("bolt", weight=0.001)
        first = await queue.submit_many(
            [{"id": f"a-{i}", "service": "echo", "customer_id": "acme"} for i in range(3)]
        )
        await queue.submit_many(
            [{"id": f"b-{i}", "service": "echo", "customer_id": "bolt"} for i in range(2)]
        )
        order = [(await queue.claim("w", [first[0].shape])).job.id for _ in range(5)]
        assert order == ["a-0", "b-0", "a-1", "b-1", "a-2"]
        assert [c.customer for c in await queue.limits.list()] == ["acme", "bolt"]
        # Pauses: claim.lua's paused/held/customer keys and unhold.lua, all declared.
        await queue.submit_many(
            [{"id": f"p-{i}", "service": "echo", "customer_id": "acme"} for i in range(2)]
        )
        await queue.pauses.pause(customer="acme")
        assert await queue.claim("w", [first[0].shape]) is None
        assert (await queue.stats()).held == 2
        assert await queue.pauses.resume(customer="acme") == 2
        await queue.pauses.pause(shape=first[0].shape)
        assert await queue.claim("w", [first[0].shape]) is None
        await queue.pauses.resume(shape=first[0].shape)
        assert (await queue.claim("w", [first[0].shape])).job.id == "p-0"
    finally:
        await queue.close()


async def test_limit_keys_on_a_cluster(cluster: list[LocalRedis]) -> None:
    """claim.lua's limit keys, uncharge in complete/fail/release/requeue, unlimit.lua (two shapes in one call)
    and limits_count.lua, on a Cluster: every key declared, all in the queue's slot."""
    queue = await Queue.connect(
        f"redis://127.0.0.1:{cluster[0].port}",
        cluster=True,
        queue_name="cllimits",
        settings=QueueSettings(claim_slack_ms=0, lease_ms=1000, reaper_interval_ms=100),
    )
    try:
        plain = {"service": "echo", "customer_id": "acme"}
        tagged = {**plain, "requirements": {"tags": ["t"]}}
        running = await queue.submit({**plain, "id": "l-0"})
        await queue.limits.set("acme", max_in_flight=1)  # limits_count, unlimit with nothing held
        shapes = [running.shape]
        first = await queue.claim("w", shapes)
        assert first is not None and first.job.id == "l-0"
        held = await queue.submit_many([{**plain, "id": "l-1"}, {**tagged, "id": "l-2"}])
        shapes.append(held[1].shape)
        assert await queue.claim("w", shapes) is None  # both held: limit keys of claim.lua
        assert (await queue.stats()).limited == 2
        assert (await queue.get("l-1")).held_by == "customer acme at in-flight cap 1/1"
        await queue.limits.set("acme", max_in_flight=3)  # unlimit puts back both shapes' jobs at once
        assert (await queue.stats()).limited == 0
        got = [await queue.claim("w", shapes) for _ in range(2)]
        assert sorted(c.job.id for c in got if c) == ["l-1", "l-2"]
        await queue.complete(first.job.id, first.token, {})  # uncharge in complete.lua
        await queue.fail(got[0].job.id, got[0].token, "x", retryable=False)  # ... in fail.lua
        await queue.release(got[1].job.id, got[1].token)  # ... in release.lua
        again = await queue.claim("w", shapes)
        assert again is not None
        for _ in range(100):  # its lease expires: requeue.lua uncharges it
            await asyncio.sleep(0.05)
            if (await queue.reap()).requeued:
                break
        assert (await queue.limits.get("acme")).in_flight == 0
        await queue.limits.set("acme", rate=1, burst=1)
        await queue.limits.remove("acme")
        assert await queue.limits.list() == []
    finally:
        await queue.close()
