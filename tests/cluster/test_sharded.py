"""Sharded pub/sub in a Cluster: lifecycle events (on per-queue channels, whatever `queue.channels` says) go out by
SPUBLISH, so they reach the queue's shard only; so do the wake-ups of idle workers, new-shape news and cancel
requests (their channels always carry the queue's hash tag). `job wait` (SSUBSCRIBE) still sees its job finish,
the worker is woken and cancelled, and a subscriber on another node hears nothing (a classic PUBLISH is
forwarded to every node of the cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from redis.cluster import key_slot

from appliance.queue.events import pubsub_events
from appliance.queue.keys import CHANNEL_COMPLETED, CHANNEL_PROGRESS, CHANNEL_SUBMITTED, QueueKeys
from tests.cluster.conftest import Fleet, base_env, cli, needs_cluster_tools
from tests.cluster.servers import RedisClusterNodes
from tests.cluster.test_cluster_fleet import spread_queues
from tests.worker.test_worker_process import DEADLINE_S, eventually

pytestmark = [needs_cluster_tools, pytest.mark.slow, pytest.mark.integration]


def heard(pubsub: redis.client.PubSub) -> list[str]:
    """Every message a subscriber has been sent so far (waits briefly for stragglers)."""
    messages = []
    # Not ignore_subscribe_messages: a confirmation skipped that way reads as "no message" and ends the loop.
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] in ("message", "pmessage", "smessage"):
            messages.append(str(message["data"]))
    return messages


async def _running(env: dict[str, str], job_id: str) -> bool:
    got = cli(env, "job", "get", job_id, "--json")
    return got.returncode == 0 and json.loads(got.stdout)["status"] in ("claimed", "running")


@pytest.mark.parametrize("setting", ["queue", None])  # None: the default (shared) setting, per queue anyway
async def test_events_wake_ups_and_cancels_stay_on_the_queue_s_shard(
    cluster: RedisClusterNodes, fleet: Fleet, tmp_path: Path, setting: str | None
) -> None:
    (name,) = spread_queues(cluster, f"sharded-{setting or 'default'}", 1)
    owner = cluster.owner(key_slot(f"appliance:{{{name}}}:x".encode()))
    other = next(n.port for n in cluster.nodes if n.port != owner)
    channels = [QueueKeys(name).prefix + c for c in (CHANNEL_SUBMITTED, CHANNEL_PROGRESS, CHANNEL_COMPLETED)]
    elsewhere = redis.Redis(port=other, decode_responses=True).pubsub()
    elsewhere.subscribe(*channels)
    # Every classic channel of the queue, as seen from another node: wake-ups (the hub's), shapes, cancels.
    elsewhere.psubscribe(f"appliance:{{{name}}}:*")
    elsewhere.subscribe(
        CHANNEL_SUBMITTED, CHANNEL_PROGRESS, CHANNEL_COMPLETED
    )  # the shared names: never used
    on_shard = redis.Redis(port=owner, decode_responses=True).pubsub()
    on_shard.ssubscribe(*channels)
    heard(elsewhere), heard(on_shard)  # the subscription confirmations
    env = base_env(
        tmp_path,
        APPLIANCE_REDIS_URL=cluster.seed,
        APPLIANCE_REDIS__MODE="cluster",
        APPLIANCE_REDIS__QUEUE=name,
        **({"APPLIANCE_QUEUE__CHANNELS": setting} if setting else {}),
    )
    worker = fleet.start(env, "--connector", "echo")
    await worker.ready()
    submitted = cli(env, "job", "submit", "--service", "echo", "--payload", '{"steps": 2, "delay": 0.2}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    waited = cli(env, "job", "wait", job_id, "--json", "--timeout", str(DEADLINE_S))
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "completed"
    # A cancel request reaches the worker running the job (sharded too).
    long = cli(env, "job", "submit", "--service", "echo", "--payload", '{"steps": 20, "delay": 20}')
    assert long.returncode == 0, long.stderr
    long_id = long.stdout.strip().splitlines()[-1]
    await eventually(lambda: _running(env, long_id), "the long job to run")
    cancelled = cli(env, "job", "cancel", long_id)
    assert cancelled.returncode == 0, cancelled.stderr
    waited = cli(env, "job", "wait", long_id, "--json", "--timeout", str(DEADLINE_S))
    assert json.loads(waited.stdout)["status"] == "cancelled", waited.stdout
    on_shard_events = [e["event"] for m in heard(on_shard) for e in pubsub_events(m)]
    assert "submitted" in on_shard_events and "completed" in on_shard_events
    assert heard(elsewhere) == []
    elsewhere.close()
    on_shard.close()
    assert fleet.tracebacks() == []
