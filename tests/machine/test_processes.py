"""Supervised container mode: `python -m appliance machine` runs its plan's processes itself.

Real supervisor, real worker and ComfyUI-wrapper children, real signals, real Redis. Waits are bounded by
generous timeouts that only guard against hangs; nothing asserts how fast anything happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from appliance.localredis import free_port
from appliance.machine.children import child_env, command_for, proc_usage
from appliance.machine.plan import PlannedService
from appliance.machine.processes import RestartPolicy
from appliance.queue import Capabilities, JobSpec, JobStatus, Queue, WorkerSession
from tests.machine.notifysock import NotifySocket
from tests.machine.test_supervisor import Collector

MID = "testbox"


# --- pure parts -------------------------------------------------------------------------------------------------


def test_restart_delay_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(delay_s=2, max_delay_s=10, burst=5, interval_s=600)
    assert [policy.delay(n) for n in range(6)] == [2, 2, 4, 8, 10, 10]


def test_commands_are_the_units_commands() -> None:
    comfy = PlannedService(name="comfyui@1", kind="comfyui", gpu=1, port=8189)
    worker = PlannedService(name="worker@echo0", kind="worker", slot="echo0", connector="echo")
    assert command_for(comfy, "/py") == ["/py", "-m", "appliance", "comfyui", "--gpu", "1"]
    assert command_for(worker, "/py") == ["/py", "-m", "appliance", "worker", "--slot", "echo0"]


def test_children_get_their_own_notify_socket() -> None:
    env = child_env(
        {
            "NOTIFY_SOCKET": "/run/systemd/notify",
            "WATCHDOG_USEC": "30000000",
            "WATCHDOG_PID": "1",
            "LISTEN_FDS": "1",
            "APPLIANCE_REDIS__URL": "redis://r",
        },
        "/tmp/x/0.sock",
        "/etc/a.toml",
    )
    assert env["NOTIFY_SOCKET"] == "/tmp/x/0.sock"
    assert not {"WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"} & set(env)
    assert env["APPLIANCE_REDIS__URL"] == "redis://r" and env["APPLIANCE_CONFIG"] == "/etc/a.toml"


def test_usage_of_a_process_tree() -> None:
    memory, cpu = proc_usage(os.getpid())
    assert memory is not None and memory > 0 and cpu is not None and cpu >= 0
    assert proc_usage(2**22 + 12345) == (None, None)  # beyond pid_max: no such process


# --- the supervisor with its children ---------------------------------------------------------------------------


def _env(redis_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("APPLIANCE_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "INVOCATION_ID")
    }
    return {
        **env,
        "APPLIANCE_REDIS__URL": redis_url,
        "APPLIANCE_MACHINE__ID": MID,
        "APPLIANCE_MACHINE__CONTAINER_MODE": "true",
        "APPLIANCE_MACHINE__STATUS_INTERVAL_S": "0.5",
        "APPLIANCE_MACHINE__RESTART_DELAY_S": "0.2",
        "APPLIANCE_HEALTH__HOST": "127.0.0.1",
        "APPLIANCE_HEALTH__PORT": str(port),
        **extra,
    }


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, json.loads(await resp.text())


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 90.0) -> Any:
    """Poll `check` until it returns something truthy; the timeout guards against hangs only."""
    deadline = time.monotonic() + timeout_s
    while not (result := await check()):
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.2)
    return result


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def _proc_env(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.decode().split("=", 1) for e in f.read().split(b"\0") if b"=" in e)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return _proc_stat(pid)[0] != "Z"  # a zombie is dead too, it only waits to be reaped
    except OSError:
        return False


async def _machine(env: dict[str, str], tmp_path: Path) -> asyncio.subprocess.Process:
    # Output goes to a file: the children write into it too, and an unread pipe would fill up and block them.
    fd = os.open(tmp_path / "machine.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance", "machine", env=env, stdout=fd, stderr=subprocess.STDOUT
        )
    finally:
        os.close(fd)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _proc_stat(int(entry))[1] == str(pid):
                    out.append(int(entry))
            except (OSError, IndexError):
                continue
    return out


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """After a failed test: SIGKILL the machine and its children (which would outlive it, as orphans)."""
    if proc.returncode is None:
        children = _children(proc.pid)
        proc.kill()
        await proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _output(proc: asyncio.subprocess.Process, tmp_path: Path, stop: bool = True) -> str:
    """Stop the machine (SIGTERM) unless `stop` is False, wait for its exit and return its output."""
    if stop and proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 120)
    return (tmp_path / "machine.log").read_text(errors="replace")


async def test_api_machine_runs_restarts_and_drains_its_workers(redis_url: str, tmp_path: Path) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    queue = await Queue.connect(redis_url)
    collector = Collector(client)
    await collector.start()
    notify = NotifySocket()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _env(
        redis_url,
        port,
        NOTIFY_SOCKET=notify.path,
        APPLIANCE_CONNECTORS__ECHO__ENABLED="true",
        APPLIANCE_CONNECTORS__ECHO__SLOTS="2",
    )
    proc = await _machine(env, tmp_path)
    pids: list[int] = []
    try:
        lines = await asyncio.to_thread(notify.wait_line, "READY=1", 90)
        assert any(line.startswith("STATUS=ready: 2/2 services active") for line in lines), lines

        code, status = await _get(base + "/status")
        services = status["status"]["services"]
        assert code == 200 and status["supervision"] == "supervisor"
        assert set(services) == {"worker@echo0", "worker@echo1"}
        for svc in services.values():
            assert svc["active_state"] == "active" and svc["healthy"] is True and svc["restarts"] == 0
            assert svc["memory_bytes"] > 0 and svc["cpu_seconds"] >= 0 and svc["uptime_s"] >= 0
        pids = [svc["main_pid"] for svc in services.values()]
        # The children are ours, and none of them got the supervisor's notify socket.
        for pid in pids:
            assert _proc_stat(pid)[1] == str(proc.pid)  # parent pid
            assert _proc_env(pid)["NOTIFY_SOCKET"] != notify.path
        code, health = await _get(base + "/health")
        assert code == 200 and health["services"] == {"worker@echo0": True, "worker@echo1": True}

        job = await queue.submit(JobSpec(service="echo", payload={"n": 1}))
        done = await queue.wait(job.id, 90)
        assert done.status is JobStatus.COMPLETED and done.worker_id in {f"{MID}-echo0", f"{MID}-echo1"}

        # kill -9 one worker: it is restarted, and the machine still runs jobs.
        victim = services["worker@echo0"]["main_pid"]
        os.kill(victim, signal.SIGKILL)

        async def restarted() -> Any:
            _, st = await _get(base + "/status")
            svc = st["status"]["services"]["worker@echo0"]
            return svc if svc["restarts"] == 1 and svc["active_state"] == "active" else None

        svc = await _until(restarted, "worker@echo0 restarted")
        assert svc["main_pid"] != victim and not _alive(victim)
        pids.append(svc["main_pid"])
        started = await collector.until(
            lambda: [
                e
                for e in collector.events
                if e["event_type"] == "service_started"
                and e["service"] == "worker@echo0"
                and e["restarts"] == 1
            ],
            90,
        )
        assert started[0]["main_pid"] == svc["main_pid"]
        for n in range(2):  # one of them may land on the restarted worker, either must complete
            job = await queue.submit(JobSpec(service="echo", payload={"n": n}))
            assert (await queue.wait(job.id, 90)).status is JobStatus.COMPLETED

        # SIGTERM while a job runs: the workers drain, the job completes (its delay is far below the grace).
        running = await queue.submit(JobSpec(service="echo", payload={"delay": 2}))

        async def is_running() -> bool:
            j = await queue.get(running.id)
            return j is not None and j.status in (JobStatus.CLAIMED, JobStatus.RUNNING)

        await _until(is_running, "the delayed job runs")
        out = await _output(proc, tmp_path)  # one SIGTERM (a second would hand the job back at once)
        assert proc.returncode == 0, out[-3000:]
        assert (await queue.get(running.id)).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        assert out.count("SIGTERM: draining") == 2  # both children got the signal from us
        assert not any(_alive(pid) for pid in pids)
        assert "STOPPING=1" in notify.lines()
        shutdown = await collector.until(
            lambda: next((e for e in collector.events if e["event_type"] == "shutdown"), None), 60
        )
        assert shutdown["reason"] == "SIGTERM"
        final = collector.statuses[-1]
        assert final["update_type"] == "shutdown"
        assert {s["active_state"] for s in final["status"]["services"].values()} == {"inactive"}
        assert not await client.exists(f"machine:{{{MID}}}:info")
    finally:
        await _kill(proc)
        notify.close()
        await collector.stop()
        await queue.close()
        await client.aclose()


def _crashing_gpu_env(redis_url: str, port: int, **extra: str) -> dict[str, str]:
    # A CPU "GPU machine" whose ComfyUI command exits at once: the wrapper exits non-zero every time.
    return _env(
        redis_url,
        port,
        APPLIANCE_MACHINE__TYPE="gpu",
        APPLIANCE_MACHINE__GPU_CPU_MODE="true",
        APPLIANCE_COMFYUI__COMMAND='["false"]',
        APPLIANCE_COMFYUI__BASE_PORT=str(free_port()),
        APPLIANCE_MACHINE__RESTART_LIMIT_BURST="2",
        APPLIANCE_MACHINE__RESTART_MAX_DELAY_S="0.5",
        **extra,
    )


async def test_a_service_failing_for_good_exits_the_container(redis_url: str, tmp_path: Path) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    queue = await Queue.connect(redis_url)
    # A job the GPU worker held when the container went down, its heartbeat still fresh: in container mode no
    # worker of ours runs before we start it, so the job goes back at clean_state.
    held = await queue.submit(JobSpec(service="comfyui", payload={}))
    old = await WorkerSession.open(queue, f"{MID}-gpu0", Capabilities(services=["comfyui"]), machine_id=MID)
    assert (await old.claim()) is not None
    await old.close(deregister=False)
    collector = Collector(client)
    await collector.start()
    notify = NotifySocket()
    env = _crashing_gpu_env(redis_url, free_port(), NOTIFY_SOCKET=notify.path)
    proc = await _machine(env, tmp_path)
    try:
        out = await _output(proc, tmp_path, stop=False)
        assert proc.returncode == 70, out[-3000:]
        failed = await collector.until(
            lambda: [e for e in collector.events if e["event_type"] == "service_failed"]
        )
        assert len(failed) == 1
        event = failed[0]
        assert event["service"] == "comfyui@0" and event["unit"] == "appliance-comfyui@0.service"
        assert event["restarts"] == 2 and event["result"] == "start-limit-hit" and event["exit_status"] != 0
        assert event["jobs_returned"] == {f"{MID}-gpu0": 0}
        shutdown = await collector.until(
            lambda: next((e for e in collector.events if e["event_type"] == "shutdown"), None)
        )
        assert shutdown["reason"] == "service_failed: comfyui@0"
        assert "READY=1" not in notify.lines() and "STOPPING=1" in notify.lines()
        assert out.count("starting ComfyUI") == 3  # the first start and two restarts
        clean = next(e for e in collector.events if e.get("step_name") == "clean_state")
        assert clean["jobs_returned"] == {f"{MID}-gpu0": 1}
        assert (await queue.get(held.id)).status is JobStatus.PENDING  # type: ignore[union-attr]
    finally:
        await _kill(proc)
        notify.close()
        await collector.stop()
        await queue.close()
        await client.aclose()


async def test_without_exit_on_failure_the_machine_stays_up_degraded(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = _crashing_gpu_env(redis_url, port, APPLIANCE_MACHINE__EXIT_ON_SERVICE_FAILURE="false")
    proc = await _machine(env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:

        async def failed() -> Any:
            try:
                code, body = await _get(base + "/status")
            except aiohttp.ClientError:
                return None
            # Before the machine has planned its services, /status lists none yet: not done, look again.
            services = body["status"]["services"]
            phase = body["status"]["machine"]["phase"]
            state = {
                name: services.get(name, {}).get("active_state") for name in ("comfyui@0", "worker@gpu0")
            }
            done = state["comfyui@0"] == "failed" and phase != "starting"
            return body if done and state["worker@gpu0"] == "inactive" else None

        status = await _until(failed, "comfyui@0 failed, worker@gpu0 stopped with it")
        assert status["status"]["machine"]["phase"] == "degraded" and status["ready"] is False
        assert (await _get(base + "/ready"))[0] == 503  # up, but it cannot serve: not ready
        assert status["status"]["services"]["worker@gpu0"]["result"] == "dependency"
        code, health = await _get(base + "/health")
        assert code == 503 and health["services"] == {"comfyui@0": False, "worker@gpu0": False}
        out = await _output(proc, tmp_path)
        assert proc.returncode == 0, out[-3000:]
    finally:
        await _kill(proc)
