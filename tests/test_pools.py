"""Pools: the classifier, the desired-machines formula, signals read from a real Redis, the Prometheus
collector and `appliance pools`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import PoolRule, PoolSettings, Settings
from appliance.machine.registry import MachineRegistry
from appliance.pools import PoolSignalsCollector, classify, desired_machines, percentile, read_pool_signals
from appliance.pools.classifier import explain
from appliance.queue import Capabilities, JobSpec, Queue, QueueSettings, WorkerSession


def _settings(**overrides: object) -> Settings:
    return Settings.model_validate(overrides)


# --- classifier -----------------------------------------------------------------------------------------------


def test_classify_default_rules_by_declared_cost() -> None:
    s = Settings()
    assert classify(JobSpec(service="echo", payload={"declared_cost_s": 5}), s).pool == "fast"
    assert classify(JobSpec(service="comfyui", payload={"declared_cost_s": 120}), s).pool == "standard"
    assert classify(JobSpec(service="comfyui", payload={"declared_cost_s": 600}), s).pool == "heavy"
    # max is exclusive, min inclusive: 30 s is not "below 30".
    assert classify(JobSpec(service="echo", payload={"declared_cost_s": 30}), s).pool == "standard"
    # Without a declared cost, timeout_s stands in; with neither, no cost rule matches.
    assert classify(JobSpec(service="echo", timeout_s=10), s).pool == "fast"
    assert classify(JobSpec(service="echo"), s).pool == "standard"
    # A boolean is not a cost.
    assert classify(JobSpec(service="echo", payload={"declared_cost_s": True}), s).pool == "standard"


def test_classify_keeps_a_named_pool_and_first_match_wins() -> None:
    s = _settings(
        classifier={
            "default_pool": "standard",
            "rules": [
                {"pool": "heavy", "service": "video"},
                {"pool": "fast", "service": "video", "workflow_id": "thumb"},  # shadowed by the rule above
                {"pool": "fast", "workflow_id": "thumb"},
                {"pool": "heavy", "min_payload_bytes": 1000},
            ],
        }
    )
    named = JobSpec(service="video", pool="fast")
    assert classify(named, s) is named
    required = JobSpec(service="video", requirements={"pool": "standard"})
    assert classify(required, s).pool is None  # requirements.pool already routes it; left untouched
    assert classify(JobSpec(service="video", workflow_id="thumb"), s).pool == "heavy"
    assert classify(JobSpec(service="img", workflow_id="thumb"), s).pool == "fast"
    assert classify(JobSpec(service="img", payload={"blob": "x" * 2000}), s).pool == "heavy"
    assert classify(JobSpec(service="img", payload={"blob": "x" * 10}), s).pool == "standard"
    why = explain(JobSpec(service="img", workflow_id="thumb"), s)
    assert why["reason"] == "classifier.rules.2" and why["pool"] == "fast"


def test_classify_does_not_mutate_and_keeps_fields() -> None:
    spec = JobSpec(service="echo", payload={"declared_cost_s": 1}, priority=7, customer_id="c1")
    out = classify(spec, Settings())
    assert spec.pool is None and out.pool == "fast"
    assert out.model_dump(exclude={"pool"}) == spec.model_dump(exclude={"pool"})


def test_rule_with_unknown_pool_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"classifier\.rules\.0\.pool: pool 'gpu' is not defined"):
        Settings(classifier={"rules": [PoolRule(pool="gpu")]})


# --- formula --------------------------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 90) == 90 and percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) is None


@pytest.mark.parametrize(
    ("waiting", "active", "p50", "pool", "expected"),
    [
        (0, 0, None, PoolSettings(), (0, "idle")),
        (0, 0, 10.0, PoolSettings(min_machines=2), (2, "min")),
        (5, 0, None, PoolSettings(), (1, "floor")),  # no run-time data: one machine to get started
        (0, 3, None, PoolSettings(machine_capacity=2), (2, "busy")),
        # 100 jobs × 30 s = 3000 s of work; one machine drains 300 s × 2 slots = 600 s per target: 5 machines.
        (90, 10, 30.0, PoolSettings(target_drain_s=300, machine_capacity=2), (5, "drain")),
        (90, 10, 30.0, PoolSettings(target_drain_s=300, machine_capacity=2, max_machines=3), (3, "max")),
        (1, 0, 0.001, PoolSettings(target_drain_s=300), (1, "drain")),
    ],
)
def test_desired_machines(
    waiting: int, active: int, p50: float | None, pool: PoolSettings, expected: tuple[int, str]
) -> None:
    assert desired_machines(waiting, active, p50, pool) == expected


# --- signals from Redis ---------------------------------------------------------------------------------------


async def _scenario(redis_url: str) -> tuple[Queue, Settings]:
    """fast: 2 waiting; heavy: 1 completed (≥ 0.2 s), 1 failed for good, 1 active; unpooled: 1 waiting (standard).
    Machines: one in heavy, one without a pool, one whose registration expired."""
    settings = _settings(
        pools={
            "fast": {"target_drain_s": 60},
            "standard": {},
            "heavy": {"target_drain_s": 1, "machine_capacity": 1, "max_machines": 10},
        }
    )
    queue = await Queue.connect(redis_url, settings=QueueSettings())
    for _ in range(2):
        await queue.submit(classify(JobSpec(service="echo", payload={"declared_cost_s": 1}), settings))
    await queue.submit(JobSpec(service="echo"))
    heavy = [await queue.submit(JobSpec(service="video", pool="heavy")) for _ in range(3)]
    session = await WorkerSession.open(
        queue, "m-heavy-0", Capabilities(services=["video"], pool="heavy"), machine_id="m-heavy"
    )
    first = await session.claim()
    assert first is not None
    await asyncio.sleep(0.2)  # a lower bound for the run time, not a timing assertion
    await queue.complete(first.job.id, first.token, {"ok": True})
    second = await session.claim()
    assert second is not None
    await queue.fail(second.job.id, second.token, "boom", retryable=False)
    third = await session.claim()
    assert third is not None and {first.job.id, second.job.id, third.job.id} == {j.id for j in heavy}
    await session.close(deregister=False)

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    for mid, pool, ttl in (("m-heavy", "heavy", 60), ("m-any", None, 60), ("m-gone", "heavy", 60)):
        await MachineRegistry(client, mid, ttl_s=ttl).register(
            {"machine_id": mid, "capabilities": {"pool": pool, "machine_type": "api"}}
        )
    await client.delete("machine:{m-gone}:info")  # its registration expired: not counted
    await client.aclose()
    return queue, settings


async def test_read_pool_signals(redis_url: str) -> None:
    queue, settings = await _scenario(redis_url)
    try:
        report = await read_pool_signals(queue, settings, window_s=600)
    finally:
        await queue.close()
    assert [p.pool for p in report.pools] == ["fast", "standard", "heavy"]
    fast, standard, heavy = report.pools
    assert (fast.waiting, fast.active, fast.unworkable) == (2, 0, 2)  # no live worker serves fast
    assert fast.oldest_wait_s is not None and fast.oldest_wait_s >= 0
    assert fast.desired_machines == 1 and fast.reason == "floor"
    assert standard.waiting == 1  # the unpooled job counts toward the default pool
    assert (heavy.waiting, heavy.active, heavy.completed, heavy.failed, heavy.machines) == (0, 1, 1, 1, 1)
    assert heavy.success_ratio == 0.5
    assert heavy.duration_p50_s is not None and heavy.duration_p50_s >= 0.2
    # 1 active × p50 ≥ 0.2 s over a 1 s target on 1 slot: at least the one busy machine.
    assert heavy.desired_machines == max(1, -(-heavy.duration_p50_s // 1)) and heavy.desired_machines >= 1
    assert report.shared_machines == 1
    assert json.loads(json.dumps(report.to_dict()))["pools"][2]["pool"] == "heavy"


async def test_collector_renders_cached_report(redis_url: str) -> None:
    queue, settings = await _scenario(redis_url)
    collector = PoolSignalsCollector(queue, settings, window_s=600, interval_s=3600)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        before = generate_latest(registry).decode()
        assert "appliance_pool_signals_up 0.0" in before and "appliance_pool_desired_machines" not in before
        await collector.start()
        text = generate_latest(registry).decode()
    finally:
        await collector.close()
        await queue.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("appliance_pool_signals_up", ())] == 1.0
    assert samples[("appliance_pool_queue_depth", (("pool", "fast"), ("queue", "default")))] == 2.0
    assert samples[("appliance_pool_jobs_active", (("pool", "heavy"), ("queue", "default")))] == 1.0
    assert samples[("appliance_pool_machines", (("pool", "heavy"), ("queue", "default")))] == 1.0
    assert samples[("appliance_pool_success_ratio", (("pool", "heavy"), ("queue", "default")))] == 0.5
    assert (
        samples[
            ("appliance_pool_window_jobs", (("outcome", "failed"), ("pool", "heavy"), ("queue", "default")))
        ]
        == 1.0
    )
    assert (
        samples[("appliance_pool_job_duration_p50_seconds", (("pool", "heavy"), ("queue", "default")))] >= 0.2
    )
    assert samples[("appliance_pool_max_machines", (("pool", "heavy"), ("queue", "default")))] == 10.0
    assert ("appliance_pool_max_machines", (("pool", "fast"), ("queue", "default"))) not in samples
    check = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_collector_keeps_last_report_when_redis_goes(private_redis) -> None:  # type: ignore[no-untyped-def]
    queue, settings = await _scenario(private_redis.url)
    collector = PoolSignalsCollector(queue, settings, interval_s=3600)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        await collector.refresh()
        private_redis.stop()
        await collector.refresh()
        text = generate_latest(registry).decode()
    finally:
        await collector.close()
        await queue.close()
    assert "appliance_pool_signals_up 0.0" in text
    assert "appliance_pool_signals_refresh_errors_total 1.0" in text
    assert 'appliance_pool_queue_depth{pool="fast",queue="default"} 2.0' in text


# --- CLI ------------------------------------------------------------------------------------------------------


def _cli(*args: str, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    if redis_url:
        env["APPLIANCE_REDIS__URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, env=env, timeout=60
    )


async def test_pools_cli(redis_url: str) -> None:
    queue, _ = await _scenario(redis_url)
    await queue.close()
    out = await asyncio.to_thread(_cli, "pools", "--json", redis_url=redis_url)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {p["pool"]: p["waiting"] for p in report["pools"]} == {"fast": 2, "standard": 1, "heavy": 0}
    table = await asyncio.to_thread(_cli, "pools", redis_url=redis_url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["POOL", "WAITING", "ACTIVE"]
    heavy = next(line for line in lines if line.startswith("heavy"))
    assert heavy.split()[1:3] == ["0", "1"] and "50%" in heavy


def test_pools_cli_errors() -> None:
    bad = _cli("pools", "--window", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--window" in bad.stderr
    down = _cli("pools", "--redis-url", "redis://127.0.0.1:1/0")
    assert down.returncode == 4 and "cannot reach Redis" in down.stderr and "Traceback" not in down.stderr
    classify_out = _cli(
        "pools", "classify", "--service", "echo", "--payload", '{"declared_cost_s": 2}', "--json"
    )
    assert classify_out.returncode == 0 and json.loads(classify_out.stdout)["pool"] == "fast"
    bad_payload = _cli("pools", "classify", "--service", "echo", "--payload", "[1]")
    assert bad_payload.returncode == 2 and "--payload" in bad_payload.stderr


async def test_connect_queue_classifies_every_submit(redis_url: str) -> None:
    """Submitting from Python through `connect_queue` classifies as the CLI does (submit and submit_many)."""
    from appliance.pools import connect_queue

    settings = Settings.model_validate({"redis": {"url": redis_url}, "classifier": {"enabled": True}})
    q = await connect_queue(settings)
    try:
        fast = await q.submit(JobSpec(service="echo", payload={"declared_cost_s": 5}))
        heavy, named = await q.submit_many(
            [
                JobSpec(service="echo", timeout_s=3600),
                JobSpec(service="echo", timeout_s=3600, pool="fast"),
            ]
        )
        stored = [await q.get(j.id) for j in (fast, heavy, named)]
        assert [j.pool or j.requirements.pool for j in stored if j] == ["fast", "heavy", "fast"]
    finally:
        await q.close()
    off = await connect_queue(Settings.model_validate({"redis": {"url": redis_url}}))
    try:
        plain = await off.submit(JobSpec(service="echo", timeout_s=5))
        assert plain.pool is None and plain.requirements.pool is None
    finally:
        await off.close()
