"""A fleet on a real 3-node Redis Cluster: CLI and `appliance worker` processes in `redis.mode = cluster`.

Four queues whose slots spread over the three primaries; every job completes exactly once (per job id: status
and the number of `completed` events); a queue's slot moves to another node while workers claim and complete
(CLUSTER SETSLOT IMPORTING/MIGRATING + MIGRATE, as `redis-cli --cluster reshard` does): nothing lost, nothing
doubled, no traceback in any log. A wrong `redis.mode` is one line naming the setting.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import key_slot

from appliance.config import Settings
from appliance.localredis import LocalRedis, free_port
from appliance.queue import JobStatus, Queue
from appliance.queue.events import EventKind
from appliance.queue.factory import connect_queue
from tests.cluster.conftest import Fleet, base_env, cli, needs_cluster_tools
from tests.cluster.servers import RedisClusterNodes
from tests.worker.test_worker_process import DEADLINE_S, eventually

pytestmark = [needs_cluster_tools, pytest.mark.slow, pytest.mark.integration]


def spread_queues(cluster: RedisClusterNodes, prefix: str, count: int = 4) -> list[str]:
    """`count` queue names whose slots differ and that together cover every primary."""
    names: list[str] = []
    owners: set[int] = set()
    slots: set[int] = set()
    i = 0
    while len(names) < count:
        name = f"{prefix}{i}"
        i += 1
        slot = key_slot(f"appliance:{{{name}}}:x".encode())
        owner = cluster.owner(slot)
        left = count - len(names)
        missing = len({n.port for n in cluster.nodes} - owners)
        if slot in slots or (owner in owners and left <= missing):
            continue
        names.append(name)
        owners.add(owner)
        slots.add(slot)
    return names


def settings_for(cluster: RedisClusterNodes, queue: str) -> Settings:
    return Settings.model_validate({"redis": {"url": cluster.seed, "mode": "cluster", "queue": queue}})


async def completed_once(queue: Queue, ids: list[str]) -> None:
    """Every job of `ids` completed, each with exactly one `completed` event; the totals agree."""
    for job_id in ids:

        async def done(job_id: str = job_id) -> Any:
            job = await queue.get(job_id)
            return job if job is not None and job.status in (JobStatus.COMPLETED, JobStatus.DEAD) else None

        job = await eventually(done, f"job {job_id} in {queue.name} to complete")
        assert job.status is JobStatus.COMPLETED, job.errors
    completions: dict[str, int] = {}
    for event in await queue.events.window(0, 10**9):  # a batch's completions share an entry: its events
        if event.kind is EventKind.COMPLETED:
            completions[event.job] = completions.get(event.job, 0) + 1
    assert {j: completions.get(j, 0) for j in ids} == dict.fromkeys(ids, 1)
    assert sum(completions.values()) == len(ids)


async def test_cli_and_workers_serve_four_queues_spread_over_the_cluster(
    cluster: RedisClusterNodes, fleet: Fleet, tmp_path: Path
) -> None:
    names = spread_queues(cluster, "fleet")
    assert {cluster.owner(key_slot(f"appliance:{{{n}}}:x".encode())) for n in names} == {
        n.port for n in cluster.nodes
    }
    env = base_env(tmp_path, APPLIANCE_REDIS_URL=cluster.seed, APPLIANCE_REDIS__MODE="cluster")
    workers = [fleet.start({**env, "APPLIANCE_REDIS__QUEUE": name}, "--connector", "echo") for name in names]
    for worker in workers:
        await worker.ready()
    queues = [await connect_queue(settings_for(cluster, name)) for name in names]
    try:
        ids: dict[str, list[str]] = {}
        for name, queue in zip(names, queues, strict=True):
            submitted = cli(
                env, "job", "submit", "--queue", name, "--service", "echo", "--payload", '{"n": 0}'
            )
            assert submitted.returncode == 0, submitted.stderr
            first = submitted.stdout.strip().splitlines()[-1]
            jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(1, 8)])
            ids[name] = [first, *(j.id for j in jobs)]
            waited = cli(env, "job", "wait", first, "--queue", name, "--json", "--timeout", str(DEADLINE_S))
            assert waited.returncode == 0, waited.stderr
            assert json.loads(waited.stdout)["result"]["echo"] == {"n": 0}
        for name, queue in zip(names, queues, strict=True):
            await completed_once(queue, ids[name])
            got = cli(env, "job", "get", ids[name][-1], "--queue", name, "--json")
            assert got.returncode == 0 and json.loads(got.stdout)["status"] == "completed", got.stderr
            # A job no worker can serve waits: the CLI cancels it.
            waiting = await queue.submit({"service": "echo", "requirements": {"tags": ["nowhere"]}})
            pending = cli(env, "job", "get", waiting.id, "--queue", name, "--json")
            assert pending.returncode == 0, pending.stderr  # a Cluster pipeline once refused its TIME
            assert json.loads(pending.stdout)["status"] == "pending"
            cancelled = cli(env, "job", "cancel", waiting.id, "--queue", name)
            assert cancelled.returncode == 0, cancelled.stderr
            assert (await queue.require(waiting.id)).status is JobStatus.CANCELLED
            stats = cli(env, "job", "stats", "--queue", name, "--json")
            assert stats.returncode == 0, stats.stderr
            totals = json.loads(stats.stdout)["totals"]
            assert totals["completed"] == len(ids[name]) and totals["cancelled"] == 1
        assert fleet.tracebacks() == []
    finally:
        for queue in queues:
            await queue.close()


async def test_a_queue_moves_to_another_node_while_workers_run(
    cluster: RedisClusterNodes, fleet: Fleet, tmp_path: Path
) -> None:
    (name,) = spread_queues(cluster, "moving", 1)
    slot = key_slot(f"appliance:{{{name}}}:x".encode())
    source = cluster.owner(slot)
    target = next(n.port for n in cluster.nodes if n.port != source)
    env = base_env(
        tmp_path,
        APPLIANCE_REDIS_URL=cluster.seed,
        APPLIANCE_REDIS__MODE="cluster",
        APPLIANCE_REDIS__QUEUE=name,
    )
    workers = [fleet.start(env, "--connector", "echo", "--index", str(i)) for i in range(2)]
    for worker in workers:
        await worker.ready()
    queue = await connect_queue(settings_for(cluster, name))
    ids: list[str] = []
    stop = asyncio.Event()

    async def submit_steadily() -> None:
        n = 0
        while not stop.is_set():
            job = await queue.submit({"service": "echo", "payload": {"n": n, "delay": 0.05}})
            ids.append(job.id)
            n += 1
            await asyncio.sleep(0.02)

    submitter = asyncio.create_task(submit_steadily())
    try:
        await eventually(lambda: _completed_at_least(queue, 5), "jobs completing before the move")
        moved = await asyncio.to_thread(cluster.move_slot, slot, target)
        assert moved > 5  # the queue's keys (job columns, indexes, events, workers) went with it
        after_move = len(ids)
        await eventually(lambda: _completed_at_least(queue, after_move + 5), "jobs completing after the move")
        stop.set()
        await submitter
        assert cluster.owner(slot) == target
        await completed_once(queue, ids)
        assert fleet.tracebacks() == []
    finally:
        stop.set()
        await asyncio.gather(submitter, return_exceptions=True)
        await queue.close()


async def _completed_at_least(queue: Queue, count: int) -> bool:
    return (await queue.stats()).totals.get("completed", 0) >= count


async def test_a_wrong_mode_is_one_line_naming_the_setting(
    cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    as_standalone = base_env(tmp_path, APPLIANCE_REDIS_URL=cluster.seed)
    stats = cli(as_standalone, "job", "stats")
    assert stats.returncode != 0
    assert stats.stderr.strip().count("\n") == 0 and "Traceback" not in stats.stderr
    assert "redis.mode" in stats.stderr and "Cluster" in stats.stderr
    worker = cli(as_standalone, "worker", "--connector", "echo", timeout_s=60)
    assert worker.returncode == 78, worker.stderr
    assert (
        "Traceback" not in worker.stderr
        and "set redis.mode = cluster" in worker.stderr.strip().splitlines()[-1]
    )


async def test_cluster_mode_against_a_standalone_server_is_one_line(tmp_path: Path) -> None:
    with LocalRedis() as server:
        as_cluster = base_env(tmp_path, APPLIANCE_REDIS_URL=server.url, APPLIANCE_REDIS__MODE="cluster")
        stats = cli(as_cluster, "job", "stats")
    assert stats.returncode != 0 and "Traceback" not in stats.stderr
    assert stats.stderr.strip().count("\n") == 0
    assert "redis.mode is cluster" in stats.stderr and "set redis.mode = standalone" in stats.stderr


async def test_sentinel_mode_against_servers_that_are_no_sentinels_is_one_line(tmp_path: Path) -> None:
    with LocalRedis() as server:
        wrong = base_env(
            tmp_path,
            APPLIANCE_REDIS__MODE="sentinel",
            APPLIANCE_REDIS__SENTINELS=f'["127.0.0.1:{server.port}"]',
            APPLIANCE_REDIS__MASTER_NAME="main",
        )
        plain_server = cli(wrong, "job", "stats")
        nobody = cli({**wrong, "APPLIANCE_REDIS__SENTINELS": f'["127.0.0.1:{free_port()}"]'}, "job", "stats")
    for result in (plain_server, nobody):
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "redis.mode is sentinel" in plain_server.stderr and "not a Sentinel" in plain_server.stderr
    assert "No master found for 'main'" in nobody.stderr and "<redis" not in nobody.stderr
