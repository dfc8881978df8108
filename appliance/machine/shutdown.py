"""How the supervisor stops: a planned stop (`systemctl stop appliance.target`) told from a degraded machine, and
the shutdown itself — STOPPING=1, the children stopped (container mode), final status, `shutdown` event,
deregistration, and a last STATUS= that says how it ended."""

from __future__ import annotations

import contextlib
from typing import Any

from redis.exceptions import RedisError

from appliance.machine.context import SUPERVISOR_UNIT, SupervisorContext, log
from appliance.machine.state import Phase
from appliance.machine.status import build_status


async def check_planned_stop(ctx: SupervisorContext) -> None:
    """`systemctl stop appliance.target` stops the workers before us (they are ordered after us): while our
    own stop job waits, that is a planned stop, not a degraded machine."""
    if ctx.state.phase in (Phase.STOPPING, Phase.FAILED) or not ctx.state.managed:
        return
    if all(st.active for st in ctx.state.units.values()):
        return
    if await ctx.systemd.stop_pending(SUPERVISOR_UNIT):
        ctx.state.phase = Phase.STOPPING
        ctx.stop_reason = "planned stop"


async def shutdown(ctx: SupervisorContext, runner: Any) -> None:
    """Stop the children (container mode), say goodbye on Redis, close the health server, queue and NVML."""
    ctx.state.phase = Phase.STOPPING if ctx.state.phase is not Phase.FAILED else Phase.FAILED
    ctx.notifier.stopping(ctx.status_line())
    log.info("stopping (%s)", ctx.stop_reason)
    if ctx.processes is not None:
        await ctx.processes.stop(ctx.notifier)
        ctx.state.units = ctx.processes.states()
    if ctx.registry is not None:
        with contextlib.suppress(RedisError, OSError):
            await ctx.registry.publish_status(build_status(ctx.state, "shutdown"))
        await ctx.event("shutdown", reason=ctx.stop_reason, uptime_ms=int(ctx.state.uptime_s() * 1000))
        with contextlib.suppress(RedisError, OSError):
            await ctx.registry.deregister()
    if runner is not None:
        await runner.cleanup()
    if ctx.queue is not None:
        with contextlib.suppress(Exception):
            await ctx.queue.close()
    ctx.nvml.stop()
    # systemd keeps a stopped unit's last STATUS=: let it say how it ended, not "stopping".
    ctx.notifier.status(
        f"failed: {ctx.state.last_error}"
        if ctx.state.phase is Phase.FAILED
        else f"stopped ({ctx.stop_reason})"
    )
    ctx.notifier.close()
