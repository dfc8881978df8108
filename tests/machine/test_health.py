"""The health server over a real socket: status codes, /status schema and redaction, /metrics format."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from appliance.machine.health import make_app
from appliance.machine.metrics import make_registry
from appliance.machine.plan import compute_plan
from appliance.machine.resources import GpuInfo, host_resources
from appliance.machine.state import MachineState, Phase
from appliance.machine.systemd import UnitState

REDIS_PASSWORD = "hunter2-redis-pass"
API_KEY = "sk-test-planted-0123456789"


def _state(managed: bool = True) -> MachineState:
    plan = compute_plan("m1", "gpu", gpu_count=1)
    state = MachineState(
        "m1",
        "gpu",
        plan,
        health_url="http://m1:9090",
        supervision="systemd" if managed else "unmanaged",
        secrets=frozenset({REDIS_PASSWORD, API_KEY}),
    )
    res = host_resources(None)
    res.gpus = [GpuInfo(0, "NVIDIA H100", "GPU-1234", 80 << 30, 2 << 30, 0.25, 0.1, 50.0, None)]
    res.nvml_available = True
    state.resources = res
    for svc in plan.services:
        state.units[svc.unit] = (
            UnitState(
                svc.unit, "loaded", "active", "running", 1, 100, 1_000_000, 1 << 20, 2.5, "up", "success"
            )
            if managed
            else UnitState(svc.unit)
        )
    state.redis_ok = state.registered = True
    state.phase = Phase.READY
    # Planted where a careless implementation would leak them: a worker's report and the last error.
    state.workers["m1-gpu0"] = {
        "status": "busy",
        "current_job_id": "j1",
        "progress": 40.0,
        "message": f"calling API with key {API_KEY}",
    }
    state.last_error = f"redis://:{REDIS_PASSWORD}@redis:6379/0 refused"
    state.queue_stats = {
        "queue": "default",
        "waiting": 3,
        "delayed": 0,
        "active": 1,
        "dead": 0,
        "unworkable": 0,
        "limited": 2,
        "workers": 2,
        "totals": {"submitted": 10, "completed": 6},
        "shapes": [
            {
                "shape": f"s-{API_KEY}",
                "requirements": {"service": "comfyui", "pool": "fast"},
                "waiting": 3,
                "oldest_wait_s": 1.5,
                "live_workers": True,
            }
        ],
    }
    return state


@pytest.fixture
async def served():
    servers = []

    async def serve(state: MachineState):
        registry, jobs = make_registry(state)
        server = TestServer(make_app(state, registry))
        await server.start_server()
        servers.append(server)
        return f"http://{server.host}:{server.port}", jobs

    yield serve
    for s in servers:
        await s.close()


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_health_and_ready_follow_the_state(served) -> None:
    state = _state()
    base, _ = await served(state)
    status, _, _ = await _get(base + "/health")
    assert status == 200
    assert (await _get(base + "/ready"))[0] == 200

    state.units["appliance-worker@gpu0.service"].active_state = "failed"
    async with aiohttp.ClientSession() as http, http.get(base + "/health") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["healthy"] is False
    assert body["services"] == {"comfyui@0": True, "worker@gpu0": False}
    assert body["checks"] == {"redis": True, "registered": True}

    state.phase = Phase.STARTING
    assert (await _get(base + "/ready"))[0] == 503
    state.phase = Phase.STOPPING
    assert (await _get(base + "/health"))[0] == 503


async def test_unmanaged_services_rely_on_own_checks(served) -> None:
    state = _state(managed=False)
    base, _ = await served(state)
    assert (await _get(base + "/health"))[0] == 200
    state.redis_ok = False
    assert (await _get(base + "/health"))[0] == 503


async def test_status_schema_and_redaction(served) -> None:
    base, _ = await served(_state())
    code, ctype, text = await _get(base + "/status")
    assert code == 200 and ctype.startswith("application/json")
    assert REDIS_PASSWORD not in text and API_KEY not in text
    async with aiohttp.ClientSession() as http, http.get(base + "/status") as resp:
        body = await resp.json()
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert {
        "machine_id",
        "machine_type",
        "timestamp",
        "update_type",
        "health_url",
        "structure",
        "status",
        "resources",
        "gpus",
        "queue",
        "healthy",
        "ready",
        "supervision",
    } <= set(body)
    assert body["status"]["machine"]["phase"] == "ready"
    svc = body["status"]["services"]["comfyui@0"]
    assert svc["active_state"] == "active" and svc["restarts"] == 1 and svc["memory_bytes"] == 1 << 20
    assert svc["healthy"] is True and svc["unit"] == "appliance-comfyui@0.service"
    worker = body["status"]["workers"]["m1-gpu0"]
    assert worker["current_job_id"] == "j1" and worker["progress"] == 40.0 and worker["slot"] == "gpu0"
    assert body["gpus"][0]["uuid"] == "GPU-1234" and body["structure"]["gpu_count"] == 1
    assert "[redacted]" in body["status"]["machine"]["last_error"]


async def test_metrics_parse_and_pass_promtool(served) -> None:
    base, jobs = await served(_state())
    jobs.duration.labels("comfyui", "completed").observe(12.0)
    jobs.queue_wait.labels("comfyui").observe(0.3)
    jobs.completed.labels("comfyui").inc()
    code, ctype, text = await _get(base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert API_KEY not in text and REDIS_PASSWORD not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "appliance_service_restarts",
        "appliance_service_memory_bytes",
        "appliance_service_cpu_seconds",
        "appliance_service_uptime_seconds",
        "appliance_gpu_utilization_ratio",
        "appliance_gpu_memory_used_bytes",
        "appliance_gpu_temperature_celsius",
        "appliance_load1",
        "appliance_disk_read_bytes",
        "appliance_network_receive_bytes",
        "appliance_job_duration_seconds",
        "appliance_job_queue_wait_seconds",
        "appliance_jobs_completed",
        "appliance_jobs_in_flight",
        "appliance_queue_depth",
        "appliance_machine_info",
    ):
        assert name in families, name
    assert families["appliance_service_restarts"].type == "counter"
    gpu_util = [s for s in families["appliance_gpu_utilization_ratio"].samples]
    assert [(s.labels, s.value) for s in gpu_util] == [({"gpu": "0"}, 0.25)]
    assert "appliance_gpu_power_watts" not in {
        s.name for f in families.values() for s in f.samples
    }  # unsupported
    in_flight = {s.labels["worker"]: s.value for s in families["appliance_jobs_in_flight"].samples}
    assert in_flight == {"m1-gpu0": 1.0}
    jobs = {s.labels["state"]: s.value for s in families["appliance_queue_jobs"].samples}
    assert jobs["limited"] == 2.0 and jobs["unworkable"] == 0.0  # held by a customer's limit, not unworkable
    depth = families["appliance_queue_depth"].samples[0]
    assert depth.value == 3.0 and depth.labels["pool"] == "fast" and depth.labels["service"] == "comfyui"
    count = [s for s in families["appliance_job_duration_seconds"].samples if s.name.endswith("_count")]
    assert count[0].value == 1.0

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    check = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_cpu_machine_metrics_have_gpu_available_zero(served) -> None:
    state = _state()
    state.resources = host_resources(None)
    base, _ = await served(state)
    _, _, text = await _get(base + "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["appliance_gpu_available"].samples[0].value == 0.0
    assert "appliance_gpu_utilization_ratio" not in families
