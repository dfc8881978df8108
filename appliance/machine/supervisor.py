"""`appliance machine`: the supervisor. It never sits in a job's path; it plans, registers, watches units,
aggregates status and serves health/metrics. systemd starts, restarts and stops every process, except in
supervised container mode (`machine.container_mode`, supervision "supervisor"), where the supervisor runs the
planned processes itself (appliance.machine.processes) and exits with status 70 when one failed for good.

Startup sequence (each step is published as `startup_step` with its elapsed time):
  detect_resources → detect_machine_type → health_server → connect_redis → plan → clean_state → register →
  wait_services, then READY=1 (units ordered after us start only then). The machine is ready later, once every
  planned service is active and each worker's connector answers: then `startup_complete` (phase ready, or
  degraded after the startup timeout), /ready 200. (appliance.target starts the planned units; `appliance units
  install` links them.)
Then: status every `machine.status_interval_s` and at once on a change, registration refresh, job metrics from
the queue's event stream, WATCHDOG=1 while this process is alive: the status loop turns and none of its own
tasks died. Redis being away is a dependency outage, not a stuck process: the machine reads "degraded" in STATUS=,
/health, /ready and the metrics, and the watchdog keeps pinging. On SIGTERM/SIGINT: STOPPING=1,
(container mode: the children stopped), final status, `shutdown` event, deregistration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from aiohttp import web

from appliance.config import Settings
from appliance.httpserve import start_server
from appliance.identity import slot_of_worker, worker_unit
from appliance.machine.context import REDIS_CALL_TIMEOUT_S, SupervisorContext
from appliance.machine.health import make_app
from appliance.machine.jobfeed import follow_job_events
from appliance.machine.metrics import make_registry
from appliance.machine.plan import AUTO, MachineType, ServicePlan
from appliance.machine.processes import MachineProcesses
from appliance.machine.refresh import Refresher
from appliance.machine.shutdown import check_planned_stop, shutdown
from appliance.machine.startup import Startup
from appliance.machine.state import MachineState, Supervision
from appliance.machine.status import change_signature
from appliance.machine.systemd import systemd_running
from appliance.machine.unitwatch import UnitWatcher
from appliance.netaddr import WILDCARD, connect_host
from appliance.notify import Notifier, WatchdogPinger, hang_event_loop

log = logging.getLogger(__name__)

#: Seconds between fast polls of unit states and worker status (a change is published at once).
CHANGE_POLL_S = 2.0
#: Exit status when a service failed for good in container mode (as `units install --container-mode`'s).
SERVICE_FAILED_EXIT_STATUS = 70
#: The status loop counts as turning while its last turn is younger than this (s): a few polls plus a
#: refresh whose Redis calls all ran into REDIS_CALL_TIMEOUT_S.
LOOP_STALL_S = 3 * CHANGE_POLL_S + 4 * REDIS_CALL_TIMEOUT_S


def decide_supervision(settings: Settings, force_unmanaged: bool = False) -> Supervision:
    """ "supervisor" in container mode (we run the processes); "systemd" only when systemd is PID 1 and started us
    (INVOCATION_ID): a developer running `appliance machine` in a shell must not wait for units it never started."""
    if force_unmanaged:
        return Supervision.UNMANAGED
    if settings.machine.container_mode:
        return Supervision.SUPERVISOR
    managed = systemd_running() and os.environ.get("INVOCATION_ID")
    return Supervision.SYSTEMD if managed else Supervision.UNMANAGED


class Supervisor(SupervisorContext):
    """The orchestrator: runs the startup sequence (appliance.machine.startup), then the status loop
    (appliance.machine.refresh, unitwatch), the job-event follower (jobfeed) and the watchdog until a stop is
    requested, then shuts down (appliance.machine.shutdown)."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        supervision: str | None = None,
        health_host: str | None = None,
        health_port: int | None = None,
        config_path: str | None = None,
    ) -> None:
        mode = Supervision(supervision) if supervision else decide_supervision(settings)
        self.conn = settings.redis_connection()
        secrets = {s for s in (self.conn.password,) if s}
        for name, c in settings.connectors.items():
            with contextlib.suppress(Exception):  # a missing key is the worker's problem, not ours
                if key := c.resolve_api_key(name):
                    secrets.add(key)
        m = settings.machine
        # With machine.type auto the type is known only after NVML was asked (detect_machine_type); until then
        # the state says "auto" and holds an empty plan.
        state = MachineState(
            m.id,
            m.type,
            ServicePlan(m.id, MachineType.API if m.type == AUTO else MachineType(m.type)),
            supervision=mode,
            secrets=frozenset(secrets),
            status_interval_s=m.status_interval_s,
        )
        super().__init__(settings, state, notifier or Notifier(), mode)
        self.health_host = health_host if health_host is not None else settings.health.host
        self.health_port = health_port if health_port is not None else settings.health.port
        #: Handed to the children in container mode (APPLIANCE_CONFIG).
        self.config_path = config_path
        self.units = UnitWatcher(self)
        self.startup = Startup(self, self.units)
        self.refresher = Refresher(self, self.units)
        self._runner: web.AppRunner | None = None
        self._last_loop = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    # --- startup ----------------------------------------------------------------------------------------------

    async def run(self) -> int:
        self._handle_signals()
        try:
            return await self._start()
        finally:
            await shutdown(self, self._runner)

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)
        if self.supervision == "supervisor":  # the images' StopSignal (systemd's), should it reach us instead
            loop.add_signal_handler(signal.SIGRTMIN + 3, self.request_stop, "SIGRTMIN+3")
        if os.environ.get("APPLIANCE_TEST_HOOKS") == "1":  # the watchdog tests: SIGUSR2 hangs the loop
            loop.add_signal_handler(signal.SIGUSR2, hang_event_loop)

    async def _start(self) -> int:
        """The startup sequence; then, unless a stop came first, serve until one does."""
        await self.startup.detect()
        await self._start_health_server()
        if not await self.startup.connect(self.conn):
            return 0  # stopped while waiting for Redis
        await self.startup.announce()
        plan = await self.startup.plan()
        if plan is None:
            return 1
        assert self.jobs is not None
        self.jobs.worker_ids = set(plan.worker_ids())
        if self.supervision == "supervisor":
            assert self.queue is not None and self.registry is not None
            self.processes = MachineProcesses(
                self.settings,
                plan,
                self.queue,
                self.registry,
                on_failed=self._service_failed,
                config_path=self.config_path,
            )
        await self.event("startup_step", **self.step("plan", services=[s.name for s in plan.services]))
        await self.event("startup_step", **self.step("clean_state", **await self._clean_state()))
        await self.register()
        await self.event("startup_step", **self.step("register"))
        await self.startup.wait_services()
        await self.event("startup_step", **self.step("wait_services"))
        return self.exit_status if self.stop_event.is_set() else await self._serve()

    async def _start_health_server(self) -> None:
        metrics_registry, self.jobs = make_registry(self.state)
        self._runner, port = await start_server(
            make_app(self.state, metrics_registry, self.publish_status),
            self.health_host,
            self.health_port,
        )
        host = (
            connect_host(self.health_host)
            if self.health_host not in WILDCARD
            else connect_host(res_host(self.state))
        )
        self.state.health_url = f"http://{host}:{port}"
        self.step("health_server", port=port)

    async def _clean_state(self) -> dict[str, Any]:
        """Forget a previous boot's registration; hand back the jobs of this machine's workers that are gone."""
        assert self.queue is not None and self.registry is not None
        stale = await self.registry.clear_stale()
        ids = set(self.state.plan.worker_ids()) | set(
            await self.queue.registry.registered_workers(self.state.machine_id)
        )
        now_ms = await self.queue.server_time_ms()
        seen = await self.queue.registry.read_workers(ids, now_ms)
        units = await self.systemd.states(
            [worker_unit(slot_of_worker(self.state.machine_id, w)) for w in sorted(ids)]
        )
        returned: dict[str, int] = {}
        for wid, unit in zip(sorted(ids), units.values(), strict=True):
            # In container mode none of our workers runs yet: whatever they held is a previous run's.
            alive = (
                unit.active if unit.managed else bool(seen.get(wid, {}).get("alive")) and not self.processes
            )
            if not alive:
                n = await self.queue.return_jobs_of_worker(wid, "machine_restart")
                if n:
                    returned[wid] = n
        return {"stale_registration": stale, "jobs_returned": returned}

    def _service_failed(self, name: str, error: str) -> None:
        """Container mode: a child failed for good (service_failed is out); the machine fails with it, if so set."""
        self.state.last_error = error
        if self.settings.machine.exit_on_service_failure:
            self.exit_status = SERVICE_FAILED_EXIT_STATUS
            self.request_stop(f"service_failed: {name}")

    # --- running ----------------------------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        interval = self.settings.machine.status_interval_s
        poll = min(CHANGE_POLL_S, interval)
        next_full = time.monotonic() + interval
        last = change_signature(self.state)
        while not await self.sleep(poll):
            self._last_loop = time.monotonic()
            full = time.monotonic() >= next_full
            await self.refresher.refresh(full)
            await check_planned_stop(self)
            await self.startup.settle()
            sig = change_signature(self.state)
            if full:
                next_full += interval * max(1, int((time.monotonic() - next_full) // interval) + 1)
                await self.publish_status("periodic")
            elif sig != last:
                await self.publish_status("event_driven")
            last = sig

    async def _loop_turns(self) -> bool:
        """Watchdog check: the status loop turned recently (it bounds its own Redis calls, so an outage
        does not stall it; a blocked event loop stops the pings by itself, since they come from the loop)."""
        return time.monotonic() - self._last_loop < LOOP_STALL_S

    async def _tasks_alive(self) -> bool:
        """Watchdog check: none of our own loops ended (one that crashed leaves a process that looks up but
        no longer watches anything; systemd's restart is the cure)."""
        for task in self._tasks:
            if task.done() and not self.stop_event.is_set():
                exc = None if task.cancelled() else task.exception()
                raise RuntimeError(f"task {task.get_name()} ended: {exc!r}")
        return True

    async def _serve(self) -> int:
        """READY=1 now (systemd starts the units ordered after us only then); the machine itself is ready once
        every planned service is active and its connector answers (`Startup.settle`, from the status loop)."""
        self.startup.start_clock()
        await self.refresher.refresh(full=False)
        await self.startup.settle()
        self.notifier.ready(self.status_line())
        self._last_loop = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(follow_job_events(self), name="job-events"),
        ]
        pinger = WatchdogPinger(self.notifier, [self._loop_turns, self._tasks_alive])
        tasks = [*self._tasks, pinger.start()]
        try:
            await self.stop_event.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.exit_status


def res_host(state: MachineState) -> str:
    """The name other machines reach us by when the health server listens on every address."""
    return state.resources.hostname if state.resources else "localhost"
