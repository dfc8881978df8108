"""The supervisor's view of its planned units: their states (systemd's, or the children's in container mode),
and what changed since the last look — started, active again, restarted, stopped, failed for good — logged and
published as events. Also the stops the units counted in ExecStopPost= (appliance.machine.stops)."""

from __future__ import annotations

import os

from appliance.machine.context import SupervisorContext, log
from appliance.machine.plan import PlannedService
from appliance.machine.state import Phase
from appliance.machine.stops import read_stops, state_directory
from appliance.machine.systemd import UnitState


class UnitWatcher:
    def __init__(self, ctx: SupervisorContext) -> None:
        self.ctx = ctx
        self._started_units: set[str] = set()
        #: Units seen active before, and their restart counts then (to tell a restart in the log).
        self._seen_active: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._failed_units: set[str] = set()

    async def read_stops(self) -> None:
        """Pick up the stops units counted in ExecStopPost=; announce each new non-clean one."""
        state = self.ctx.state
        before, state.unit_stops = state.unit_stops, read_stops(state_directory(os.environ))
        for unit, counts in state.unit_stops.items():
            for result, count in counts.items():
                if result != "success" and count > before.get(unit, {}).get(result, 0) and before:
                    log.warning("%s stopped: %s (%d so far)", unit, result, count)
                    await self.ctx.event("service_stopped", unit=unit, result=result, count=count)

    async def poll(self) -> None:
        ctx = self.ctx
        ctx.state.units = (
            ctx.processes.states() if ctx.processes else await ctx.systemd.states(ctx.state.plan.units)
        )
        for svc in ctx.state.plan.services:
            st = ctx.state.units.get(svc.unit)
            if st is None or not st.managed:
                continue
            restarted = self._note_restarts(svc, st)
            if st.active and svc.unit not in self._started_units:
                await self._started(svc, st, restarted)
            elif not st.active:
                await self._inactive(svc, st)

    def _note_restarts(self, svc: PlannedService, st: UnitState) -> bool:
        # A quick restart may happen between two polls: NRestarts tells it anyway. The count is taken from the
        # first look on (systemd's own count starts with the unit's loading, not with this supervisor).
        previous = self._restarts.get(svc.unit)
        self._restarts[svc.unit] = st.restarts
        restarted = previous is not None and st.restarts > previous
        if restarted:
            log.warning(
                "%s restarted by systemd (restart %d since it was loaded; now %s)",
                svc.unit,
                st.restarts,
                st.active_state,
            )
        return restarted

    async def _started(self, svc: PlannedService, st: UnitState, restarted: bool) -> None:
        self._started_units.add(svc.unit)
        self._failed_units.discard(svc.unit)
        if svc.unit in self._seen_active and not restarted:
            log.info("%s active again", svc.unit)
        self._seen_active.add(svc.unit)
        await self.ctx.event(
            "service_started",
            service=svc.name,
            unit=svc.unit,
            main_pid=st.main_pid,
            restarts=st.restarts,
            elapsed_ms=self.ctx.elapsed_ms(),
        )

    async def _inactive(self, svc: PlannedService, st: UnitState) -> None:
        if svc.unit in self._started_units and self.ctx.state.phase is not Phase.STOPPING:
            log.warning(
                "%s is %s (%s), was active%s",
                svc.unit,
                st.active_state,
                st.sub_state,
                f"; result {st.result}" if st.result and st.result != "success" else "",
            )
        self._started_units.discard(svc.unit)
        if st.failed and svc.unit not in self._failed_units and not self.ctx.processes:
            self._failed_units.add(svc.unit)
            log.error(
                "%s failed for good (result %s after %d restarts); its jobs go back to the queue",
                svc.unit,
                st.result or "unknown",
                st.restarts,
            )
            await self.ctx.event(
                "service_failed",
                service=svc.name,
                unit=svc.unit,
                result=st.result,
                restarts=st.restarts,
            )
