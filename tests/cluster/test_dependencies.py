"""Job dependencies on a real 3-node Redis Cluster, with the CLI and `appliance worker` processes in
`redis.mode = cluster`: every key the dependency steps touch (the edges, the blocked index, the parents column, the
delayed set that releases a child) is declared in KEYS and shares the queue's hash tag, so fan-in, a failure
down a chain and a cancelled parent all work across the slots of two queues on different nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.queue import JobStatus
from tests.cluster.conftest import Fleet, base_env, cli, needs_cluster_tools
from tests.cluster.servers import RedisClusterNodes
from tests.cluster.test_cluster_fleet import spread_queues
from tests.worker.test_worker_process import DEADLINE_S

pytestmark = [needs_cluster_tools, pytest.mark.slow, pytest.mark.integration]


def submit(env: dict[str, str], *args: str) -> str:
    out = cli(env, "job", "submit", "--service", "echo", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def record(env: dict[str, str], job_id: str) -> dict[str, object]:
    got = cli(env, "job", "wait", job_id, "--json", "--timeout", str(DEADLINE_S))
    assert got.returncode in (0, 1), got.stderr
    return dict(json.loads(got.stdout))


async def test_dependencies_on_a_cluster(cluster: RedisClusterNodes, fleet: Fleet, tmp_path: Path) -> None:
    for name in spread_queues(cluster, "deps", 2):
        env = base_env(
            tmp_path,
            APPLIANCE_REDIS_URL=cluster.seed,
            APPLIANCE_REDIS__MODE="cluster",
            APPLIANCE_REDIS__QUEUE=name,
        )
        left = submit(env, "--payload", '{"side": "left", "delay": 0.5}')
        right = submit(env, "--payload", '{"side": "right"}')
        join = submit(env, "--after", left, "--after", right)
        broken = submit(env, "--payload", '{"fail": "permanent", "delay": 0.5}')
        doomed = submit(env, "--after", broken)
        chained = submit(env, "--after", doomed, "--on-parent-failure", "cancel")
        held = submit(env, "--payload", '{"delay": 30}', "--after", join)
        spared = submit(env, "--after", held, "--on-parent-failure", "ignore")
        worker = fleet.start(env, "--connector", "echo", "--concurrency", "4")
        await worker.ready()
        joined = record(env, join)
        assert joined["status"] == "completed", joined
        parents = joined["result"]["parents"]  # type: ignore[index]
        assert parents[left]["echo"]["side"] == "left" and parents[right]["echo"]["side"] == "right"
        assert record(env, doomed)["status"] == JobStatus.FAILED.value
        assert record(env, chained)["status"] == JobStatus.CANCELLED.value
        cancelled = cli(env, "job", "cancel", held)
        assert cancelled.returncode == 0, cancelled.stderr
        assert record(env, spared)["status"] == "completed"  # ignore: the cancelled parent counts as done
        stats = json.loads(cli(env, "job", "stats", "--json").stdout)
        assert stats["blocked"] == 0 and stats["totals"]["completed"] == 4  # left, right, join, spared
        worker.kill()
    assert fleet.tracebacks() == []
