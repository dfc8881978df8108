"""Shared by the monitor tests: run a monitor in-process, publish a simulated GPU machine with the machine
layer's own status builder and registry (NVML is the only thing replaced: GPU readings are given)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from appliance.config import Settings
from appliance.httpserve import start_server
from appliance.machine.plan import plan_from_settings
from appliance.machine.registry import MachineRegistry
from appliance.machine.resources import GpuInfo, HostResources
from appliance.machine.state import MachineState, Phase
from appliance.machine.status import build_status
from appliance.machine.systemd import UnitState
from appliance.monitor.app import Monitor, make_app
from appliance.pools import PoolSignalsCollector, read_pool_signals

GIB = 2**30


@contextlib.asynccontextmanager
async def running_monitor(
    url: str,
    *,
    token: str | None = None,
    interval_s: float = 0.5,
    poll_s: float = 0.3,
    tick_s: float = 0.3,
    **settings: Any,
) -> AsyncIterator[tuple[Monitor, str]]:
    cfg = Settings.model_validate({"machine": {"status_interval_s": interval_s}, **settings})
    monitor = Monitor(cfg, url=url, token=token, poll_s=poll_s, tick_s=tick_s, pool_signals=read_pool_signals)
    pools = PoolSignalsCollector(None, cfg, interval_s=poll_s * 3)  # type: ignore[arg-type]
    runner, port = await start_server(make_app(monitor, pools), "127.0.0.1", 0)
    try:
        yield monitor, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def gpu_machine_state(machine_id: str, *, pool: str = "heavy", restarts: int = 2) -> MachineState:
    settings = Settings.model_validate({"machine": {"id": machine_id, "type": "gpu", "pool": pool}})
    plan = plan_from_settings(settings, 2)
    gpus = [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", "GPU-0a", 80 * GIB, 61 * GIB, 0.93, 0.41, 71.0, 512.0),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", "GPU-1b", 80 * GIB, 12 * GIB, 0.08, 0.02, 43.0, 120.0),
    ]
    resources = HostResources(
        "gpu-host",
        "Linux 6.8",
        32,
        256 * GIB,
        200 * GIB,
        "/",
        2000 * GIB,
        900 * GIB,
        gpus=gpus,
        nvml_available=True,
        driver_version="550.54.15",
    )
    state = MachineState(
        machine_id,
        "gpu",
        plan,
        health_url="http://gpu-host:9090",
        supervision="systemd",
        phase=Phase.READY,
        resources=resources,
        redis_ok=True,
        registered=True,
    )
    for i, svc in enumerate(plan.services):
        state.units[svc.unit] = UnitState(
            unit=svc.unit,
            load_state="loaded",
            active_state="active",
            sub_state="running",
            restarts=restarts if i == 0 else 0,
        )
    for svc in plan.workers:
        wid = svc.worker_id(machine_id)
        if wid:
            state.workers[wid] = {
                "state": "idle",
                "status": "idle, 0 jobs done",
                "alive": True,
                "jobs": [],
                "current_job_id": None,
            }
    return state


class SimulatedMachine:
    """Publishes a machine's status every `interval_s` through MachineRegistry, until stopped."""

    def __init__(self, url: str, state: MachineState, interval_s: float = 0.5) -> None:
        self.url, self.state, self.interval_s = url, state, interval_s
        self._task: asyncio.Task[None] | None = None
        self.client: aioredis.Redis | None = None
        self.registry: MachineRegistry | None = None

    async def start(self) -> None:
        self.client = aioredis.Redis.from_url(self.url, decode_responses=True)
        self.registry = MachineRegistry(self.client, self.state.machine_id, ttl_s=30)
        await self.registry.register(
            {
                "machine_id": self.state.machine_id,
                "machine_type": self.state.machine_type,
                "capabilities": {"pool": "heavy", "gpu_count": 2},
                "phase": "ready",
            }
        )
        await self.registry.publish_event("startup_complete", total_startup_time_ms=4200)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.registry is not None
        while True:
            await self.registry.publish_status(build_status(self.state))
            await asyncio.sleep(self.interval_s)

    async def stop(self, deregister: bool = False) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            if deregister and self.registry is not None:
                await self.registry.deregister()
            await self.client.aclose()
