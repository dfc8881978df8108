"""The supervisor's startup sequence, step by step (each published as `startup_step` with its elapsed time):
detect_resources → detect_machine_type → (health_server) → connect_redis → plan → (clean_state, register) →
wait_services; then, from the status loop, the machine's readiness: `startup_complete` once every planned service
is active and each worker's connector answers (phase ready), or degraded after the startup timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from appliance.config import RedisConnection
from appliance.machine.context import REDIS_CALL_TIMEOUT_S, SUPERVISOR_UNIT, SupervisorContext, log
from appliance.machine.plan import AUTO, PlanError, ServicePlan, plan_from_settings, resolve_machine_type
from appliance.machine.registry import MachineRegistry
from appliance.machine.resources import host_resources
from appliance.machine.state import Phase
from appliance.machine.unitwatch import UnitWatcher
from appliance.queue.factory import RedisModeError, connect_queue
from appliance.rediserrors import describe_redis_error, redis_error_kind

#: How long services may take to become active when no ComfyUI is planned (s).
API_SERVICES_TIMEOUT_S = 120.0


class Startup:
    def __init__(self, ctx: SupervisorContext, units: UnitWatcher) -> None:
        self.ctx = ctx
        self.units = units
        #: When the machine stops waiting for its services and starts degraded (set by `start_clock`).
        self.deadline = 0.0

    def services_timeout_s(self) -> float:
        """How long the planned services may take to become active: ComfyUI's startup timeout, if one is planned."""
        has_comfy = any(s.kind == "comfyui" for s in self.ctx.state.plan.services)
        return self.ctx.settings.comfyui.startup_timeout_s if has_comfy else API_SERVICES_TIMEOUT_S

    async def detect(self) -> None:
        """detect_resources (NVML started only where GPUs are expected), then detect_machine_type."""
        ctx = self.ctx
        ctx.state.resources = await asyncio.to_thread(
            lambda: host_resources(ctx.nvml.start(ctx.state.machine_type == "gpu"))
        )
        ctx.step("detect_resources", gpu_count=ctx.state.resources.gpu_count)
        self._detect_machine_type()

    def _detect_machine_type(self) -> None:
        """The seed's "detect machine type" step: machine.type auto becomes gpu or api from the GPUs found."""
        ctx = self.ctx
        m, res = ctx.settings.machine, ctx.state.resources
        gpus = res.gpu_count if res is not None else 0
        try:
            mtype = resolve_machine_type(m.type, gpus, cpu_mode=m.gpu_cpu_mode or ctx.settings.comfyui.cpu)
        except PlanError:
            return  # the plan step reports it
        ctx.state.machine_type = mtype.value
        ctx.step("detect_machine_type", machine_type=mtype.value, configured=m.type, gpu_count=gpus)
        if m.type == AUTO:
            log.info("machine type %s: NVML found %d GPU(s)", mtype.value, gpus)

    async def connect(self, conn: RedisConnection) -> bool:
        """Connect to Redis, retrying until it answers (systemd's start timeout bounds the wait)."""
        ctx = self.ctx
        backoff = 0.5
        while True:
            try:
                ctx.queue = await connect_queue(
                    ctx.settings,
                    connection=conn,
                    # A pooled connection Redis closed (it restarted) is retried at once instead of failing
                    # the next call with a false "Connection closed by server".
                    retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
                    socket_timeout=REDIS_CALL_TIMEOUT_S,
                    socket_connect_timeout=REDIS_CALL_TIMEOUT_S,
                )
                break
            except (RedisError, OSError, RedisModeError) as exc:
                # Unreachable, or reached and refused (password, ACL, OOM, a redis.mode that does not match the
                # server): the line says which, so an operator fixes the right thing; either may change while we
                # wait, so keep trying.
                line = (
                    str(exc) if isinstance(exc, RedisModeError) else describe_redis_error(exc, conn.where())
                )
                refused = isinstance(exc, RedisModeError) or redis_error_kind(exc) != "unreachable"
                ctx.state.last_error = line if refused else f"Redis unreachable: {type(exc).__name__}"
                ctx.notifier.status(f"starting: waiting for Redis at {conn.where()}")
                log.warning("%s; retrying", line)
                if await ctx.sleep(backoff):
                    return False
                backoff = min(backoff * 2, 10.0)
        ctx.state.redis_ok, ctx.state.last_error = True, None
        ctx.registry = MachineRegistry(
            ctx.queue.client,
            ctx.state.machine_id,
            ttl_s=ctx.settings.machine.registration_ttl_s,
            secrets=ctx.state.secrets,
        )
        ctx.step("connect_redis")
        return True

    async def announce(self) -> None:
        """`machine_startup` with the host's facts, then the steps done so far (Redis was not there before)."""
        ctx = self.ctx
        res = ctx.state.resources
        assert res is not None
        await ctx.event(
            "machine_startup",
            phase="starting",
            supervision=ctx.supervision,
            host_info={
                "hostname": res.hostname,
                "os": res.os,
                "cpu_cores": res.cpu_cores,
                "total_ram_gb": round(res.ram_total_bytes / 2**30, 2),
                "gpu_count": res.gpu_count,
                "gpu_models": [g.name for g in res.gpus],
            },
        )
        for step in ctx.steps:
            await ctx.event("startup_step", **step)

    async def plan(self) -> ServicePlan | None:
        """The service plan for the GPUs found; None (the machine failed, `startup_failed` is out) if none fits."""
        ctx = self.ctx
        res = ctx.state.resources
        assert res is not None
        try:
            plan = plan_from_settings(ctx.settings, res.gpu_count)
        except PlanError as exc:
            ctx.state.phase, ctx.state.last_error = Phase.FAILED, str(exc)
            await ctx.event("startup_failed", error=str(exc), elapsed_ms=ctx.elapsed_ms())
            log.error("%s", exc)
            return None
        ctx.state.plan = plan
        return plan

    async def wait_services(self) -> None:
        """Under systemd: until every planned unit is active (or the timeout; then the machine starts degraded).

        appliance.target starts the units; one ordered After= this supervisor waits for our READY=1, so it is
        not waited for here (that would deadlock) and its `service_started` comes later from the status loop.
        In container mode: start the children, then wait until each sent READY=1 or failed (or the timeout)."""
        ctx = self.ctx
        if ctx.processes is not None:
            await ctx.processes.start()
        elif not ctx.state.managed:
            ctx.state.units = await ctx.systemd.states(ctx.state.plan.units)
            return
        deadline = time.monotonic() + self.services_timeout_s()
        while True:
            await self.units.poll()
            pending = self._pending()
            if not pending or time.monotonic() > deadline or ctx.stop_event.is_set():
                break
            ctx.notifier.status(
                f"starting: waiting for {len(pending)} service(s): {', '.join(sorted(pending))}"
            )
            # Our own deadline bounds the wait; keep systemd's start timeout from cutting it short.
            ctx.notifier.extend_timeout(5.0)
            if await ctx.sleep(1.0):
                break

    def _pending(self) -> list[str]:
        ctx = self.ctx
        if ctx.processes:
            return ctx.processes.pending()
        return [u for u, st in ctx.state.units.items() if not st.active and SUPERVISOR_UNIT not in st.after]

    def start_clock(self) -> None:
        """From READY=1 on, the services have `services_timeout_s` to become ready before the machine degrades."""
        self.deadline = time.monotonic() + self.services_timeout_s()

    async def settle(self) -> None:
        """While starting: once nothing is missing, or the startup timeout passed, the machine is READY (or
        DEGRADED, saying what is missing) and `startup_complete` goes out."""
        ctx, state = self.ctx, self.ctx.state
        if state.phase is not Phase.STARTING:
            return
        missing = state.not_ready()
        failed = any(st.failed for st in state.units.values())  # for good: no use waiting for it
        if missing and not failed and time.monotonic() < self.deadline:
            return
        state.phase = Phase.DEGRADED if missing else Phase.READY
        elapsed = ctx.elapsed_ms()
        if missing:
            log.warning("started degraded after %.1fs: %s", elapsed / 1000, "; ".join(missing))
        else:
            log.info("ready after %.1fs: %d service(s) active", elapsed / 1000, len(state.plan.services))
        await ctx.event(
            "startup_complete",
            total_startup_time_ms=elapsed,
            startup_steps=ctx.steps,
            machine_config=self._machine_config(),
            phase=state.phase.value,
            missing=missing,
        )
        await ctx.publish_status("machine_ready")

    def _machine_config(self) -> dict[str, Any]:
        state = self.ctx.state
        res = state.resources
        return {
            "gpu_count": res.gpu_count if res else 0,
            "gpu_memory": round(sum(g.memory_total_bytes for g in res.gpus) / 2**30, 2) if res else 0,
            "gpu_model": res.gpus[0].name if res and res.gpus else None,
            "cpu_cores": res.cpu_cores if res else 0,
            "ram_gb": round(res.ram_total_bytes / 2**30, 2) if res else 0,
            "services": [s.name for s in state.plan.services],
        }
