"""The machine's command-line: plan, on-failure, status, fleet drain/undrain (real processes, real Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from appliance.machine.onfailure import resolve_unit
from appliance.machine.plan import PlanError
from appliance.queue import Capabilities, JobSpec, JobStatus, Queue, WorkerSession


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        env={**full, **(env or {})},
        timeout=60,
    )


def test_plan_json_for_gpus() -> None:
    res = _cli(
        "machine",
        "plan",
        "--json",
        "--gpus",
        "2",
        env={"APPLIANCE_MACHINE__ID": "g1", "APPLIANCE_MACHINE__TYPE": "gpu"},
    )
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["machine_id"] == "g1" and plan["machine_type"] == "gpu"
    assert plan["services"][1] == {
        "name": "worker@gpu0",
        "unit": "appliance-worker@gpu0.service",
        "kind": "worker",
        "gpu": 0,
        "slot": "gpu0",
        "connector": "comfyui",
        "binds_to": "appliance-comfyui@0.service",
    }


def test_plan_errors_are_one_line() -> None:
    res = _cli("machine", "plan", "--gpus", "0", env={"APPLIANCE_MACHINE__TYPE": "gpu"})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no GPU" in res.stderr
    assert "Traceback" not in res.stderr


def test_resolve_unit() -> None:
    assert resolve_unit("m", "appliance-worker@openai1.service").worker_ids == ("m-openai1",)
    assert resolve_unit("m", "appliance-comfyui@2").worker_ids == ("m-gpu2",)
    assert resolve_unit("m", "appliance\\x2dworker@gpu0.service").service == "worker@gpu0"
    assert resolve_unit("m", "appliance-machine").worker_ids == ()
    for bad in ("appliance-comfyui@x.service", "sshd.service"):
        with pytest.raises(PlanError):
            resolve_unit("m", bad)


async def test_on_failure_returns_jobs_and_publishes(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    job = await queue.submit(JobSpec(service="echo"))
    session = await WorkerSession.open(queue, "box-echo0", Capabilities(services=["echo"]), machine_id="box")
    assert (await session.claim()) is not None
    pubsub = client.pubsub()
    await pubsub.subscribe("machine:startup:events")
    env = {"APPLIANCE_REDIS__URL": redis_url, "APPLIANCE_MACHINE__ID": "box"}
    try:
        res = _cli("machine", "on-failure", "appliance-worker@echo0.service", env=env)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == (
            "appliance-worker@echo0.service: 1 job(s) returned to the queue; service_failed published"
        )
        back = await queue.get(job.id)
        assert back is not None and back.status is JobStatus.PENDING and back.attempts == 1
        msg = None
        while msg is None:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
        event = json.loads(msg["data"])
        assert event["event_type"] == "service_failed" and event["machine_id"] == "box"
        assert event["unit"] == "appliance-worker@echo0.service" and event["jobs_returned"] == {
            "box-echo0": 1
        }

        bad = _cli("machine", "on-failure", "sshd.service", env=env)
        assert bad.returncode == 2 and bad.stderr.startswith("appliance: error: unit 'sshd.service'")
    finally:
        await session.close()
        await pubsub.aclose()
        await client.aclose()
        await queue.close()


async def test_fleet_drain_undrain_and_status(redis_url: str) -> None:
    env = {"APPLIANCE_REDIS__URL": redis_url}
    assert _cli("fleet", "drain", "m7", "--reason", "maintenance", env=env).stdout.strip() == (
        "m7: drained (no machine of that id has registered yet)"
    )
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    assert json.loads(await client.get("machine:{m7}:drain"))["reason"] == "maintenance"
    assert _cli("fleet", "undrain", "m7", env=env).stdout.strip() == (
        "m7: undrained (no machine of that id has registered yet)"
    )
    assert not await client.exists("machine:{m7}:drain")
    assert _cli("fleet", "undrain", "m7", env=env).stdout.strip().startswith("m7: was not drained")
    res = _cli("machine", "status", "--machine", "m7", env=env)
    assert res.returncode == 3 and "has no current status" in res.stderr
    await client.aclose()


def test_unreachable_redis_is_one_line() -> None:
    res = _cli("fleet", "drain", "m1", env={"APPLIANCE_REDIS__URL": "redis://127.0.0.1:1/0"})
    assert res.returncode == 4 and res.stderr.startswith("appliance: error: cannot reach Redis")
    assert "Traceback" not in res.stderr
