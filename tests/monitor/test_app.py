"""The monitor's HTTP/WebSocket side against a real Redis: snapshot, live deltas, resync, token, Redis restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from appliance.config.queue import EventsMode, QueueSettings
from appliance.localredis import LocalRedis, free_port
from appliance.queue import Capabilities, JobSpec, Queue, WorkerSession
from tests.monitor.helpers import SimulatedMachine, gpu_machine_state, running_monitor


async def _until(
    ws: aiohttp.ClientWebSocketResponse, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            body = json.loads(msg.data)
            if pred(body):
                return body


async def test_snapshot_deltas_and_resync(redis_url: str) -> None:
    gpu = SimulatedMachine(redis_url, gpu_machine_state("sim-gpu"))
    await gpu.start()
    queue = await Queue.connect(redis_url)
    try:
        async with running_monitor(redis_url) as (_monitor, base), aiohttp.ClientSession() as http:
            async with http.ws_connect(base + "/ws") as ws:
                snap = await _until(ws, lambda m: m["type"] == "full_state_snapshot")
                assert snap["redis"]["ok"] in (True, False) and snap["queue"] == "default"
                update = await _until(
                    ws,
                    lambda m: (
                        m["type"] == "machine_update"
                        and m["machine"]["id"] == "sim-gpu"
                        and m["machine"]["online"]
                    ),
                )
                machine = update["machine"]
                assert machine["pool"] == "heavy" and len(machine["gpus"]) == 2
                assert machine["services"]["comfyui@0"]["restarts"] == 2

                job = await queue.submit(JobSpec(service="echo", payload={}))
                await _until(ws, lambda m: m["type"] == "job_update" and m["job"]["id"] == job.id)
                session = await WorkerSession.open(queue, "w-1", Capabilities(services=["echo"]))
                claimed = await session.claim()
                assert claimed is not None
                await queue.progress(claimed.job.id, claimed.token, 55, "half way")
                running = await _until(ws, lambda m: m["type"] == "job_update" and m["job"]["percent"] == 55)
                assert running["job"]["status"] == "running" and running["job"]["worker"] == "w-1"
                await queue.fail(claimed.job.id, claimed.token, "model exploded", retryable=False)
                failed = await _until(
                    ws,
                    lambda m: (
                        m["type"] == "job_update" and m["job"]["status"] == "failed" and m["job"]["error"]
                    ),
                )
                assert "model exploded" in failed["job"]["error"]
                await session.close()

                stats = await _until(ws, lambda m: m["type"] == "queue_stats")
                assert stats["stats"]["totals"].get("failed") == 1
                pools = await _until(ws, lambda m: m["type"] == "pools")
                assert [p["pool"] for p in pools["pools"]["pools"]] == ["fast", "standard", "heavy"]

                await ws.send_json({"type": "resync_request"})
                again = await _until(ws, lambda m: m["type"] == "full_state_snapshot")
                assert any(j["id"] == job.id and j["status"] == "failed" for j in again["jobs"])
                assert any(m["id"] == "sim-gpu" for m in again["machines"])

                await gpu.stop(
                    deregister=True
                )  # deregistered: offline at the next poll, not after 2 intervals
                gone = await _until(
                    ws,
                    lambda m: (
                        m["type"] == "machine_update"
                        and m["machine"]["id"] == "sim-gpu"
                        and not m["machine"]["online"]
                    ),
                )
                assert gone["machine"]["offline_reason"] == "registration expired"
            async with http.get(base + "/api/state") as resp:
                assert resp.status == 200 and (await resp.json())["type"] == "full_state_snapshot"
            async with http.get(base + "/") as resp:
                page = await resp.text()
                assert (
                    resp.status == 200
                    and "/static/monitor.js" in page
                    and "http" not in page.split("<body>")[0]
                )
                assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    finally:
        await gpu.stop()
        await queue.close()


async def test_token_auth(redis_url: str) -> None:
    async with (
        running_monitor(redis_url, token="s3cret-token") as (_m, base),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(base + "/api/state") as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(base + "/metrics", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(base + "/api/state", headers={"Authorization": "Bearer s3cret-token"}) as resp:
            assert resp.status == 200
        async with http.get(base + "/metrics?token=s3cret-token") as resp:
            assert resp.status == 200 and "appliance_pool_signals_up" in await resp.text()
        for path in ("/", "/healthz", "/static/monitor.css"):  # the page must load to show the login prompt
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
        async with http.ws_connect(base + "/ws?token=nope") as ws:
            first = await ws.receive()
            assert json.loads(first.data) == {"type": "auth_required"}
            closing = await ws.receive()
            assert (
                closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 4401
            )
        async with http.ws_connect(base + "/ws?token=s3cret-token") as ws:
            snap = await _until(ws, lambda m: True)
            assert snap["type"] == "full_state_snapshot"


async def test_survives_redis_restart(private_redis: LocalRedis) -> None:
    queue = await Queue.connect(private_redis.url)
    async with running_monitor(private_redis.url) as (monitor, base), aiohttp.ClientSession() as http:
        async with http.ws_connect(base + "/ws") as ws:
            await asyncio.wait_for(monitor.feed.synced.wait(), 30)
            await _until(ws, lambda m: m["type"] == "queue_stats")
            await queue.close()
            private_redis.stop()
            down = await _until(ws, lambda m: m["type"] == "redis" and m["ok"] is False)
            assert down["error"]
            tick = await _until(ws, lambda m: m["type"] == "tick")
            assert tick["redis"]["ok"] is False
            async with http.get(base + "/healthz") as resp:
                assert (await resp.json()) == {"ok": True, "redis": False}
            private_redis.start()
            # Reconnected: every client gets a fresh snapshot, and new jobs flow again.
            snap = await _until(ws, lambda m: m["type"] == "full_state_snapshot" and m["redis"]["ok"])
            assert snap["redis"]["error"] is None
            queue = await Queue.connect(private_redis.url)
            job = await queue.submit(JobSpec(service="echo"))
            await _until(ws, lambda m: m["type"] == "job_update" and m["job"]["id"] == job.id)
            await queue.close()


def test_monitor_command_errors() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    bad = subprocess.run(
        [sys.executable, "-m", "appliance", "monitor", "--port", "70000"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--port" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "appliance", "monitor"],
        capture_output=True,
        text=True,
        env={**env, "APPLIANCE_MONITOR__TOKEN_FILE": "/nonexistent/token"},
        timeout=60,
    )
    assert (
        missing.returncode == 78 and "Traceback" not in missing.stderr and "token" in missing.stderr
    )  # a configuration error


async def test_monitor_command_serves(redis_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_REDIS__URL"] = redis_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "monitor",
        "--port",
        str(port),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            if (await resp.json())["redis"]:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert f"monitor on http://127.0.0.1:{port}/" in out.decode()


async def test_the_fleets_other_queues_are_shown_by_their_numbers(redis_url: str) -> None:
    images = await Queue.connect(redis_url, queue_name="images")
    try:
        for _ in range(2):
            await images.submit(JobSpec(service="echo", payload={}))
        async with (
            running_monitor(redis_url, worker={"queues": ["default", "images"]}) as (_monitor, base),
            aiohttp.ClientSession() as http,
        ):

            async def images_row() -> dict[str, Any] | None:
                async with http.get(base + "/api/state") as resp:
                    row = (await resp.json())["other_queues"].get("images")
                return row if row and row["waiting"] == 2 else None

            row = None
            for _ in range(300):  # the feed polls every 0.3 s
                if (row := await images_row()) is not None:
                    break
                await asyncio.sleep(0.1)
            assert row is not None and row["queue"] == "images" and row["totals"]["submitted"] == 2
            async with http.get(base + "/api/state") as resp:
                snap = await resp.json()
            assert snap["queue"] == "default" and list(snap["other_queues"]) == ["images"]  # not itself twice
    finally:
        await images.close()


async def test_a_job_waiting_for_its_parents_shows_blocked_until_they_complete(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    session = None
    try:
        parent = await queue.submit(JobSpec(service="echo", payload={}))
        early = await queue.submit(JobSpec(service="echo", payload={}, after=[parent.id]))
        async with running_monitor(redis_url) as (_monitor, base), aiohttp.ClientSession() as http:
            async with http.ws_connect(base + "/ws") as ws:
                # Replayed from the stream into the first snapshot: blocked, not pending.
                snap = await _until(
                    ws,
                    lambda m: (
                        m["type"] == "full_state_snapshot" and any(j["id"] == early.id for j in m["jobs"])
                    ),
                )
                assert {j["id"]: j["status"] for j in snap["jobs"]}[early.id] == "blocked"
                # Live: a child submitted now arrives blocked too.
                late = await queue.submit(JobSpec(service="echo", payload={}, after=[parent.id]))
                update = await _until(ws, lambda m: m["type"] == "job_update" and m["job"]["id"] == late.id)
                assert update["job"]["status"] == "blocked"
                session = await WorkerSession.open(queue, "w-1", Capabilities(services=["echo"]))
                claimed = await session.claim()
                assert claimed is not None and claimed.job.id == parent.id
                await queue.complete(parent.id, claimed.token, {})
                # The parent's completion releases both, in either order: they wait in line (pending), not
                # finished. One pass over the updates, so the first child's wait cannot swallow the second's.
                freed: dict[str, dict[str, Any]] = {}

                def both_freed(m: dict[str, Any]) -> bool:
                    job = m.get("job") or {}
                    if m["type"] == "job_update" and job.get("id") in (early.id, late.id):
                        if job["status"] != "blocked":
                            freed.setdefault(job["id"], job)
                    return len(freed) == 2

                await _until(ws, both_freed)
                for child in (early, late):
                    assert (freed[child.id]["status"], freed[child.id]["finished_ms"]) == ("pending", None)
    finally:
        if session is not None:
            await session.close()
        await queue.close()


@pytest.mark.parametrize("mode", [EventsMode.PUBSUB, EventsMode.STREAM])
async def test_the_monitor_shows_every_job_of_a_round_trips_one_message_or_entry(
    redis_url: str, mode: EventsMode
) -> None:
    # `queue.events = pubsub`: the monitor learns of jobs from the channels alone; `stream`: from the stream
    # alone. A worker's round trip sends its 3 claims as one job_claimed message / one stream entry and its 3
    # completions as one complete_job message / one entry (issue 14): each job must show claimed, then completed,
    # live, and (stream) in a new monitor's first snapshot, replayed from the stream.
    queue = await Queue.connect(redis_url, settings=QueueSettings(events=mode))
    try:
        async with (
            running_monitor(redis_url, queue={"events": mode.value}) as (_monitor, base),
            aiohttp.ClientSession() as http,
            http.ws_connect(base + "/ws") as ws,
        ):
            await _until(ws, lambda m: m["type"] == "full_state_snapshot")
            jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(3)])
            shapes = [jobs[0].shape]
            _, leased = await queue.finish_and_claim([], "w-1", shapes, 3)
            assert len(leased) == 3
            seen: dict[str, set[str]] = {job.id: set() for job in jobs}

            def every_job(status: str) -> Callable[[dict[str, Any]], bool]:
                def check(m: dict[str, Any]) -> bool:
                    # A monitor that loads the stream after the round trip shows it in its snapshot instead.
                    shown = [m.get("job") or {}] if m["type"] == "job_update" else []
                    shown += m["jobs"] if m["type"] == "full_state_snapshot" else []
                    for job in shown:
                        if job.get("id") in seen:
                            seen[job["id"]].add(job["status"])
                    return all(status in statuses for statuses in seen.values())

                return check

            await _until(ws, every_job("claimed"))
            codes, _ = await queue.finish_and_claim(
                [(c.job.id, c.token, {}) for c in leased], "w-1", shapes, 3
            )
            assert codes == [1, 1, 1]
            await _until(ws, every_job("completed"))
        if mode is EventsMode.STREAM:
            async with (
                running_monitor(redis_url, queue={"events": mode.value}) as (_monitor, base),
                aiohttp.ClientSession() as http,
                http.ws_connect(base + "/ws") as ws,
            ):
                snap = await _until(
                    ws,
                    lambda m: (
                        m["type"] == "full_state_snapshot"
                        and {j.id for j in jobs} <= {j["id"] for j in m["jobs"]}
                    ),
                )
                shown = {j["id"]: j["status"] for j in snap["jobs"]}
                assert [shown[job.id] for job in jobs] == ["completed"] * 3
    finally:
        await queue.close()
