"""Job metrics fed from queue event-stream entries, and the machine registry's refresh."""

from __future__ import annotations

import redis.asyncio as aioredis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.machine.metrics import make_registry
from appliance.machine.plan import ConnectorSlots, compute_plan
from appliance.machine.registry import MachineRegistry
from appliance.machine.state import MachineState


def _samples(registry) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_job_events_of_our_workers_only() -> None:
    state = MachineState(
        "m1", "api", compute_plan("m1", "api", gpu_count=0, connectors=[ConnectorSlots("echo", 1)])
    )
    registry, jobs = make_registry(state)
    ours, theirs = "m1-echo0", "m1-x-echo0"
    jobs.observe(
        "1000-0", {"event": "claimed", "job": "a", "worker": ours, "service": "echo", "wait_ms": "250"}
    )
    jobs.observe(
        "3000-0", {"event": "retrying", "job": "a", "worker": ours, "service": "echo", "attempt": "1"}
    )
    jobs.observe(
        "4000-0", {"event": "claimed", "job": "a", "worker": ours, "service": "echo", "wait_ms": "3000"}
    )
    jobs.observe(
        "9000-0", {"event": "completed", "job": "a", "worker": ours, "service": "echo", "duration_ms": "5000"}
    )
    jobs.observe(
        "9500-0", {"event": "claimed", "job": "b", "worker": ours, "service": "echo", "wait_ms": "1"}
    )
    jobs.observe("9600-0", {"event": "released", "job": "b", "worker": ours, "service": "echo"})
    jobs.observe(
        "9700-0", {"event": "completed", "job": "c", "worker": theirs, "service": "echo", "duration_ms": "1"}
    )
    s = _samples(registry)
    assert s[("appliance_jobs_completed_total", (("service", "echo"),))] == 1.0
    assert s[("appliance_jobs_failed_total", (("retryable", "true"), ("service", "echo")))] == 1.0
    assert s[("appliance_jobs_retried_total", (("service", "echo"),))] == 1.0
    assert s[("appliance_jobs_released_total", (("service", "echo"),))] == 1.0
    assert s[("appliance_job_queue_wait_seconds_count", (("service", "echo"),))] == 3.0
    assert s[("appliance_job_queue_wait_seconds_sum", (("service", "echo"),))] == 3.251
    # The failed attempt is timed from its claim entry (2 s); the completed one from duration_ms (5 s).
    assert s[("appliance_job_duration_seconds_sum", (("outcome", "failed"), ("service", "echo")))] == 2.0
    assert s[("appliance_job_duration_seconds_sum", (("outcome", "completed"), ("service", "echo")))] == 5.0


async def test_registry_refresh_detects_expiry(aredis: aioredis.Redis) -> None:
    reg = MachineRegistry(aredis, "m1", ttl_s=30, secrets=["topsecret-value"])
    await reg.register({"machine_id": "m1", "note": "uses topsecret-value", "plan": {"services": []}})
    assert await reg.refresh("ready") is True
    stored = await aredis.hgetall("machine:{m1}:info")
    assert stored[b"note"] == b"uses [redacted]" and stored[b"phase"] == b"ready"
    await aredis.delete("machine:{m1}:info")  # Redis restarted without persistence, say
    assert await reg.refresh("ready") is False
    assert not await aredis.exists("machine:{m1}:info")  # no half record left behind
    assert await reg.clear_stale() is True and await aredis.zscore("machines", "m1") is None
