"""The supervisor's periodic reading of the machine: unit states and worker status at every poll, and, on a full
refresh, host resources, queue stats, unit stops and the registration's renewal.

Redis being away is a dependency outage, not a stuck process: every Redis read is bounded, a failure marks Redis
down (the machine reads "degraded") and its return is logged with how long it was away."""

from __future__ import annotations

import asyncio
import time

from redis.exceptions import RedisError

from appliance.machine.context import REDIS_CALL_TIMEOUT_S, SupervisorContext, log
from appliance.machine.resources import host_resources
from appliance.machine.unitwatch import UnitWatcher
from appliance.queue.registry import is_drained


class Refresher:
    def __init__(self, ctx: SupervisorContext, units: UnitWatcher) -> None:
        self.ctx = ctx
        self.units = units
        self._redis_down_since: float | None = None

    async def refresh(self, full: bool) -> None:
        """Read units and workers (and, when `full`, resources and queue stats); Redis errors mark Redis down."""
        state = self.ctx.state
        await self.units.poll()
        state.settle_phase()  # at once: /status must not show a failed unit with the phase from before it
        if full:
            await self._read_resources()
        assert self.ctx.queue is not None and self.ctx.registry is not None
        try:
            async with asyncio.timeout(2 * REDIS_CALL_TIMEOUT_S):  # the client's own retries included
                await self._read_queue(full)
            self._redis_answered()
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
        state.settle_phase()

    async def _read_resources(self) -> None:
        nvml, state = self.ctx.nvml, self.ctx.state
        gpus = await nvml.poll() if nvml.available else []
        res = await asyncio.to_thread(host_resources, None)
        if gpus is not None:
            res.gpus = gpus
        elif state.resources:
            res.gpus = state.resources.gpus  # NVML hung this round: keep the last reading
        res.nvml_available, res.nvml_error = nvml.available, nvml.error
        res.driver_version = nvml.driver_version
        state.resources = res

    async def _read_queue(self, full: bool) -> None:
        ctx, state = self.ctx, self.ctx.state
        assert ctx.queue is not None and ctx.registry is not None
        ids = set(state.plan.worker_ids()) | set(state.workers)
        state.workers = await ctx.queue.registry.read_workers(ids, await ctx.queue.server_time_ms())
        state.draining = await is_drained(ctx.queue.client, state.machine_id)
        if full:
            state.queue_stats = (await ctx.queue.stats()).model_dump(mode="json")
            await self.units.read_stops()
            if not await ctx.registry.refresh(state.phase.value):
                await ctx.register()  # the key expired (Redis restarted or was flushed)

    def _redis_failed(self, exc: BaseException) -> None:
        state = self.ctx.state
        if state.redis_ok:
            self._redis_down_since = time.monotonic()
            log.warning(
                "Redis unreachable (%s: %s); machine degraded, services keep running, retrying",
                type(exc).__name__,
                exc,
            )
        state.redis_ok = False
        state.last_error = f"Redis unreachable: {type(exc).__name__}"

    def _redis_answered(self) -> None:
        state = self.ctx.state
        if not state.redis_ok and self._redis_down_since is not None:
            log.warning("Redis answers again after %.0fs", time.monotonic() - self._redis_down_since)
            state.last_error = None
        self._redis_down_since = None
        state.redis_ok = True
