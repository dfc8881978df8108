"""One `appliance worker --queues a,b` serving two queues that live on different Cluster nodes: it registers in
both, claims from them in turn, completes every job once, and `appliance job stats --queues` shows both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis.cluster import key_slot

from appliance.queue.factory import connect_queue
from tests.cluster.conftest import Fleet, base_env, cli, needs_cluster_tools
from tests.cluster.servers import RedisClusterNodes
from tests.cluster.test_cluster_fleet import completed_once, settings_for, spread_queues

pytestmark = [needs_cluster_tools, pytest.mark.slow, pytest.mark.integration]


async def test_one_worker_serves_two_queues_in_turn(
    cluster: RedisClusterNodes, fleet: Fleet, tmp_path: Path
) -> None:
    names = spread_queues(cluster, "multi", 2)
    ports = {cluster.owner(key_slot(f"appliance:{{{n}}}:x".encode())) for n in names}
    assert len(ports) == 2  # on two shards
    queues = [await connect_queue(settings_for(cluster, n)) for n in names]
    try:
        ids = {
            q.name: [
                j.id
                for j in await q.submit_many([{"service": "echo", "payload": {"i": i}} for i in range(8)])
            ]
            for q in queues
        }
        env = base_env(tmp_path, APPLIANCE_REDIS_URL=cluster.seed, APPLIANCE_REDIS__MODE="cluster")
        worker = fleet.start(env, "--connector", "echo", "--queues", ",".join(names))
        await worker.ready()
        for queue in queues:
            await completed_once(queue, ids[queue.name])
        # In turn: ordered by when they finished, the first half holds jobs of both queues about equally.
        finished = []
        for queue in queues:
            for job_id in ids[queue.name]:
                job = await queue.require(job_id)
                finished.append((job.finished_at, queue.name))
        first_half = [name for _, name in sorted(finished)[:8]]
        assert all(first_half.count(n) >= 3 for n in names), first_half
        stats = cli(env, "job", "stats", "--queues", ",".join(names), "--json")
        assert stats.returncode == 0, stats.stderr
        shown = json.loads(stats.stdout)
        assert [s["queue"] for s in shown] == names
        assert all(s["totals"]["completed"] == 8 and s["workers"] == 1 for s in shown), shown
        assert fleet.tracebacks() == []
    finally:
        for queue in queues:
            await queue.close()
