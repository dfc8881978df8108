"""`python -m appliance machine` as a real process against a real, password-protected Redis.

Covers the startup sequence (events in order, registration, READY/STATUS/WATCHDOG on a fake notify socket),
cleaning a previous boot's leased jobs, status every interval and at once on a change, drain, job metrics from
the queue's event stream, redaction of planted secrets, and the shutdown on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from appliance.localredis import LocalRedis, free_port
from appliance.queue import Capabilities, JobSpec, JobStatus, Queue, WorkerSession
from tests.machine.notifysock import NotifySocket

MID = "testbox"
PASSWORD = "planted-redis-pass-4711"
API_KEY = "sk-planted-openai-key-0815"
STEPS = [
    "detect_resources",
    "detect_machine_type",
    "health_server",
    "connect_redis",
    "plan",
    "clean_state",
    "register",
    "wait_services",
]


@pytest.fixture
def locked_redis():
    server = LocalRedis().start()  # LocalRedis checks readiness with a bare PING: set the password after
    import redis

    with redis.Redis.from_url(server.url) as r:
        r.config_set("requirepass", PASSWORD)
    yield server
    server.cleanup()


class Collector:
    """Every message on the machine's channels, from before the process starts."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.changed = asyncio.Event()

    async def start(self) -> None:
        self.pubsub = self.client.pubsub()
        await self.pubsub.subscribe("machine:startup:events", f"machine:status:{MID}")
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.pubsub.listen():
            if msg["type"] != "message":
                continue
            self.raw.append(msg["data"])
            data = json.loads(msg["data"])
            (self.events if msg["channel"] == "machine:startup:events" else self.statuses).append(data)
            self.changed.set()

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        """Wait until predicate() is truthy; the timeout guards against hangs and asserts nothing about speed."""
        deadline = time.monotonic() + timeout_s
        while not (result := predicate()):
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("condition never held")
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass
        return result

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pubsub.aclose()


async def _start_machine(env: dict[str, str], *argv: str) -> asyncio.subprocess.Process:
    """`appliance machine` as its unit starts it, with `env` alone (no config file), output on one pipe."""
    env.pop("APPLIANCE_CONFIG", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "machine",
        *argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def test_machine_lifecycle(locked_redis: LocalRedis) -> None:
    client = aioredis.Redis.from_url(locked_redis.url, password=PASSWORD, decode_responses=True)
    queue = await Queue.connect(locked_redis.url, password=PASSWORD)
    # A previous boot of this machine left a job leased by echo1, whose last heartbeat is long past.
    job = await queue.submit(JobSpec(service="echo", payload={"n": 1}))
    old = await WorkerSession.open(queue, f"{MID}-echo1", Capabilities(services=["echo"]), machine_id=MID)
    assert (await old.claim()) is not None
    await old.close(deregister=False)
    await client.zadd(queue.keys.workers_seen, {f"{MID}-echo1": int(time.time() * 1000) - 3_600_000})
    await client.hset(
        f"machine:{{{MID}}}:info", mapping={"machine_id": MID, "phase": "ready"}
    )  # stale registration

    collector = Collector(client)
    await collector.start()
    notify = NotifySocket()
    port = free_port()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "1000000",
        "APPLIANCE_REDIS__URL": locked_redis.url,
        "APPLIANCE_REDIS__PASSWORD": PASSWORD,
        "APPLIANCE_CONNECTORS__OPENAI__API_KEY": API_KEY,
        "APPLIANCE_MACHINE__ID": MID,
        "APPLIANCE_MACHINE__TYPE": "api",
        "APPLIANCE_MACHINE__STATUS_INTERVAL_S": "0.5",
        "APPLIANCE_MACHINE__REGISTRATION_TTL_S": "30",
        "APPLIANCE_CONNECTORS__ECHO__ENABLED": "true",
        "APPLIANCE_CONNECTORS__ECHO__SLOTS": "2",
        "APPLIANCE_HEALTH__HOST": "127.0.0.1",
        "APPLIANCE_HEALTH__PORT": str(port),
    }
    proc = await _start_machine(env)
    base = f"http://127.0.0.1:{port}"
    session = None
    try:
        await asyncio.to_thread(notify.wait_line, "READY=1")
        await asyncio.to_thread(notify.wait_for, lambda ls: ls.count("WATCHDOG=1") >= 1)
        lines = notify.lines()
        assert lines.index("READY=1") < lines.index("WATCHDOG=1")
        assert any(line.startswith("STATUS=ready: 2/2 services unmanaged") for line in lines), lines

        # Lifecycle events, in order.
        await collector.until(lambda: any(e["event_type"] == "startup_complete" for e in collector.events))
        kinds = [e["event_type"] for e in collector.events]
        assert kinds == ["machine_startup"] + ["startup_step"] * len(STEPS) + ["startup_complete"]
        steps = [e for e in collector.events if e["event_type"] == "startup_step"]
        assert [s["step_name"] for s in steps] == STEPS
        assert all(a["elapsed_ms"] <= b["elapsed_ms"] for a, b in zip(steps, steps[1:], strict=False))
        startup = collector.events[0]
        assert startup["machine_id"] == MID and startup["host_info"]["cpu_cores"] >= 1
        assert startup["host_info"]["gpu_count"] == 0  # NVML absent here: a CPU machine
        complete = collector.events[-1]
        assert complete["machine_config"]["services"] == ["worker@echo0", "worker@echo1"]
        assert complete["total_startup_time_ms"] >= steps[-1]["elapsed_ms"]

        # The previous boot's job went back to the queue; the stale registration was replaced.
        clean = next(s for s in steps if s["step_name"] == "clean_state")
        assert clean["jobs_returned"] == {f"{MID}-echo1": 1} and clean["stale_registration"] is True
        returned = await queue.get(job.id)
        assert returned is not None and returned.status is JobStatus.PENDING

        # Registration.
        info = await client.hgetall(f"machine:{{{MID}}}:info")
        assert info["machine_type"] == "api" and info["health_url"].endswith(f":{port}")
        assert [s["name"] for s in json.loads(info["plan"])["services"]] == ["worker@echo0", "worker@echo1"]
        assert await client.zscore("machines", MID) is not None
        assert 0 < await client.ttl(f"machine:{{{MID}}}:info") <= 30

        # Status every interval.
        await collector.until(lambda: sum(s["update_type"] == "periodic" for s in collector.statuses) >= 2)
        assert collector.statuses[0]["update_type"] == "machine_ready"

        # A worker's own status reaches the machine status at once (before the next periodic one would).
        session = await WorkerSession.open(
            queue, f"{MID}-echo0", Capabilities(services=["echo"]), machine_id=MID
        )
        await session.set_status({"status": "busy", "current_job_id": job.id, "progress": 50.0})
        busy = await collector.until(
            lambda: next(
                (
                    s
                    for s in collector.statuses
                    if s["status"]["workers"][f"{MID}-echo0"].get("current_job_id") == job.id
                ),
                None,
            )
        )
        worker = busy["status"]["workers"][f"{MID}-echo0"]
        assert worker["status"] == "busy" and worker["progress"] == 50.0 and worker["alive"] is True

        # A job run by this machine's worker lands in the job metrics (from the queue's event stream).
        claimed = await session.claim()
        assert claimed is not None and claimed.job.id == job.id
        await queue.complete(job.id, claimed.token, {"ok": True})

        async def metrics_have_job() -> str | None:
            _, text = await _get(base + "/metrics")
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            done = (
                [
                    s.value
                    for s in fams.get("appliance_jobs_completed", ()).samples
                    if s.name.endswith("_total") and s.labels.get("service") == "echo"
                ]
                if fams.get("appliance_jobs_completed")
                else []
            )
            return text if done == [1.0] else None

        deadline = time.monotonic() + 60
        while (metrics := await metrics_have_job()) is None:
            assert time.monotonic() < deadline, "job metrics never appeared"
            await asyncio.sleep(0.2)
        fams = {f.name: f for f in text_string_to_metric_families(metrics)}
        waits = [s for s in fams["appliance_job_queue_wait_seconds"].samples if s.name.endswith("_count")]
        assert [s.value for s in waits] == [1.0]
        if shutil.which("promtool"):
            check = await asyncio.to_thread(
                subprocess.run,
                ["promtool", "check", "metrics"],
                input=metrics,
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stdout + check.stderr

        # Health endpoints; secrets appear nowhere.
        code, health = await _get(base + "/health")
        assert code == 200 and json.loads(health)["checks"] == {"redis": True, "registered": True}
        assert (await _get(base + "/ready"))[0] == 200
        code, status = await _get(base + "/status")
        assert code == 200 and json.loads(status)["machine_id"] == MID
        seen = "\n".join([status, metrics, health, *collector.raw, json.dumps(info)])
        assert PASSWORD not in seen and API_KEY not in seen
    finally:
        if session is not None:
            await session.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        notify_lines = notify.lines()
        notify.close()

    assert proc.returncode == 0, out.decode()[-2000:]
    assert PASSWORD not in out.decode() and API_KEY not in out.decode()
    assert "STOPPING=1" in notify_lines
    shutdown = await collector.until(
        lambda: next((e for e in collector.events if e["event_type"] == "shutdown"), None)
    )
    assert shutdown["reason"] == "SIGTERM" and shutdown["uptime_ms"] > 0
    assert collector.statuses[-1]["update_type"] == "shutdown"
    assert not await client.exists(f"machine:{{{MID}}}:info")
    assert await client.zscore("machines", MID) is None
    history = [json.loads(e)["event_type"] for e in await client.lrange(f"machine:{{{MID}}}:events", 0, -1)]
    assert history[0] == "machine_startup" and history[-1] == "shutdown"
    await collector.stop()
    await queue.close()
    await client.aclose()


async def test_changes_are_published_at_once(redis_url: str) -> None:
    """With a long status interval, a worker's change and a drain each produce an event_driven status."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    queue = await Queue.connect(redis_url)
    collector = Collector(client)
    await collector.start()
    port = free_port()
    env = {
        **os.environ,
        "APPLIANCE_REDIS__URL": redis_url,
        "APPLIANCE_MACHINE__ID": MID,
        "APPLIANCE_MACHINE__TYPE": "api",
        "APPLIANCE_MACHINE__STATUS_INTERVAL_S": "600",
        "APPLIANCE_CONNECTORS__ECHO__ENABLED": "true",
        "APPLIANCE_HEALTH__HOST": "127.0.0.1",
    }
    env.pop("NOTIFY_SOCKET", None)
    env.pop("APPLIANCE_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "machine",
        "--health-port",
        str(port),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    session = None
    try:
        await collector.until(lambda: any(s["update_type"] == "machine_ready" for s in collector.statuses))
        session = await WorkerSession.open(
            queue, f"{MID}-echo0", Capabilities(services=["echo"]), machine_id=MID
        )
        await session.set_status({"status": "busy", "current_job_id": "job-1", "progress": 10.0})
        first = await collector.until(
            lambda: next(
                (
                    s
                    for s in collector.statuses
                    if s["status"]["workers"][f"{MID}-echo0"].get("current_job_id") == "job-1"
                ),
                None,
            )
        )
        assert first["update_type"] == "event_driven"

        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance", "fleet", "drain", MID, env=env, stdout=subprocess.PIPE
        )
        out, _ = await cli.communicate()
        assert cli.returncode == 0 and out.decode().strip() == f"{MID}: drained"
        drained = await collector.until(lambda: next((s for s in collector.statuses if s["draining"]), None))
        assert drained["update_type"] == "event_driven"
        assert (await _get(f"http://127.0.0.1:{port}/metrics"))[1].count(
            "appliance_machine_draining 1.0"
        ) == 1
    finally:
        if session is not None:
            await session.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()[-2000:]
    shutdown = await collector.until(
        lambda: next((e for e in collector.events if e["event_type"] == "shutdown"), None)
    )
    assert shutdown["reason"] == "SIGINT"
    await collector.stop()
    await queue.close()
    await client.aclose()


async def test_redis_outage_is_degraded_and_the_watchdog_keeps_pinging(private_redis: LocalRedis) -> None:
    """Redis away for many watchdog periods: the supervisor keeps sending WATCHDOG=1 (it is alive; a restart
    would not bring Redis back), says "degraded ... Redis unreachable" in STATUS=, /health, /ready and the
    metrics, and is ready again once Redis answers, logging how long it was away."""
    notify = NotifySocket()
    port = free_port()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "1000000",  # a ping every 0.5 s
        "APPLIANCE_REDIS__URL": private_redis.url,
        "APPLIANCE_MACHINE__ID": MID,
        "APPLIANCE_MACHINE__TYPE": "api",
        "APPLIANCE_MACHINE__STATUS_INTERVAL_S": "0.5",
        "APPLIANCE_CONNECTORS__ECHO__ENABLED": "true",
        "APPLIANCE_HEALTH__HOST": "127.0.0.1",
        "APPLIANCE_HEALTH__PORT": str(port),
    }
    proc = await _start_machine(env)
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(notify.wait_line, "READY=1")
        private_redis.kill()
        lines = await asyncio.to_thread(
            notify.wait_for, lambda ls: any("Redis unreachable" in line for line in ls)
        )
        down_at = len(lines)
        # Ten pings after the outage was noticed: five times the 1 s watchdog limit, Redis still away.
        await asyncio.to_thread(notify.wait_for, lambda ls: ls[down_at:].count("WATCHDOG=1") >= 10)
        assert not private_redis.ping()
        assert proc.returncode is None
        code, body = await _get(base + "/ready")
        assert code == 503 and json.loads(body)["phase"] == "degraded"
        code, body = await _get(base + "/health")
        assert code == 503 and json.loads(body)["checks"]["redis"] is False
        metrics = (await _get(base + "/metrics"))[1]
        assert "appliance_machine_redis_up 0.0" in metrics and "appliance_machine_ready 0.0" in metrics

        private_redis.start()
        back = len(notify.lines())
        await asyncio.to_thread(
            notify.wait_for, lambda ls: any(line.startswith("STATUS=ready:") for line in ls[back:])
        )
        code, body = await _get(base + "/ready")
        assert code == 200 and json.loads(body)["phase"] == "ready"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        notify.close()
    log = out.decode()
    assert proc.returncode == 0, log[-2000:]
    assert "Redis unreachable" in log and "Redis answers again after" in log, log[-2000:]
    # After Redis is back, a pooled connection it closed is retried, not reported as a new failure.
    after = log[log.index("Redis answers again after") :]
    assert "Connection closed by server" not in after and "could not publish" not in after, after
