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

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from appliance.config import Settings
from appliance.httpserve import start_server
from appliance.identity import slot_of_worker, worker_unit
from appliance.machine.health import make_app
from appliance.machine.metrics import JobMetrics, make_registry
from appliance.machine.plan import (
    AUTO,
    MachineType,
    PlanError,
    ServicePlan,
    plan_from_settings,
    resolve_machine_type,
)
from appliance.machine.processes import MachineProcesses
from appliance.machine.registry import MachineRegistry
from appliance.machine.resources import Nvml, host_resources
from appliance.machine.state import MachineState, Phase, Supervision
from appliance.machine.status import build_status, change_signature, registration_record, status_line
from appliance.machine.stops import read_stops, state_directory
from appliance.machine.systemd import SystemdUnits, systemd_running
from appliance.netaddr import WILDCARD, connect_host
from appliance.notify import Notifier, WatchdogPinger, hang_event_loop
from appliance.queue import Queue
from appliance.queue.registry import is_drained
from appliance.rediserrors import describe_redis_error, redis_error_kind
from appliance.secrets import redact_url

log = logging.getLogger(__name__)

#: Seconds between fast polls of unit states and worker status (a change is published at once).
CHANGE_POLL_S = 2.0
#: Our own unit (appliance-machine.service): units ordered after it start only after our READY=1.
SUPERVISOR_UNIT = "appliance-machine.service"
#: How long services may take to become active when no ComfyUI is planned (s).
API_SERVICES_TIMEOUT_S = 120.0
#: Exit status when a service failed for good in container mode (as `units install --container-mode`'s).
SERVICE_FAILED_EXIT_STATUS = 70
#: Bound on one Redis call (connect, command): an unanswering Redis must not stall the status loop, whose
#: turning is what the watchdog checks (s).
REDIS_CALL_TIMEOUT_S = 5.0
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


class Supervisor:
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
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.supervision = Supervision(supervision) if supervision else decide_supervision(settings)
        self.systemd = SystemdUnits(managed=self.supervision == "systemd")
        self.nvml = Nvml()
        self.conn = settings.redis_connection()
        secrets = {s for s in (self.conn.password,) if s}
        for name, c in settings.connectors.items():
            with contextlib.suppress(Exception):  # a missing key is the worker's problem, not ours
                if key := c.resolve_api_key(name):
                    secrets.add(key)
        m = settings.machine
        self.health_host = health_host if health_host is not None else settings.health.host
        self.health_port = health_port if health_port is not None else settings.health.port
        # With machine.type auto the type is known only after NVML was asked (detect_machine_type); until then
        # the state says "auto" and holds an empty plan.
        self.state = MachineState(
            m.id,
            m.type,
            ServicePlan(m.id, MachineType.API if m.type == AUTO else MachineType(m.type)),
            supervision=self.supervision,
            secrets=frozenset(secrets),
            status_interval_s=m.status_interval_s,
        )
        self.stop_event = asyncio.Event()
        self.stop_reason = "stopped"
        self.steps: list[dict[str, Any]] = []
        self.queue: Queue | None = None
        self.registry: MachineRegistry | None = None
        self.jobs: JobMetrics | None = None
        self._t0 = time.monotonic()
        self._last_loop = time.monotonic()
        self._redis_down_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._startup_deadline = 0.0
        self._started_units: set[str] = set()
        #: Units seen active before, and their restart counts then (to tell a restart in the log).
        self._seen_active: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._failed_units: set[str] = set()
        self.exit_status = 0
        #: The children, in container mode; `config_path` is handed to them (APPLIANCE_CONFIG).
        self.config_path = config_path
        self.processes: MachineProcesses | None = None

    # --- helpers ----------------------------------------------------------------------------------------------

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _step(self, name: str, **detail: Any) -> dict[str, Any]:
        step = {"step_name": name, "elapsed_ms": self._elapsed_ms(), **detail}
        self.steps.append(step)
        self.notifier.status(f"starting: {name.replace('_', ' ')} done")
        return step

    def _detect_machine_type(self) -> None:
        """The seed's "detect machine type" step: machine.type auto becomes gpu or api from the GPUs found."""
        m, res = self.settings.machine, self.state.resources
        gpus = res.gpu_count if res is not None else 0
        try:
            mtype = resolve_machine_type(m.type, gpus, cpu_mode=m.gpu_cpu_mode or self.settings.comfyui.cpu)
        except PlanError:
            return  # the plan step reports it
        self.state.machine_type = mtype.value
        self._step("detect_machine_type", machine_type=mtype.value, configured=m.type, gpu_count=gpus)
        if m.type == AUTO:
            log.info("machine type %s: NVML found %d GPU(s)", mtype.value, gpus)

    async def _read_stops(self) -> None:
        """Pick up the stops units counted in ExecStopPost=; announce each new non-clean one."""
        before, self.state.unit_stops = self.state.unit_stops, read_stops(state_directory(os.environ))
        for unit, counts in self.state.unit_stops.items():
            for result, count in counts.items():
                if result != "success" and count > before.get(unit, {}).get(result, 0) and before:
                    log.warning("%s stopped: %s (%d so far)", unit, result, count)
                    await self._event("service_stopped", unit=unit, result=result, count=count)

    async def _event(self, event_type: str, **fields: Any) -> None:
        if self.registry is None:
            return
        if not self.state.redis_ok and self.state.phase is not Phase.STARTING:
            log.info("event %s not published: Redis unreachable", event_type)
            return  # each try would hold the status loop for the client's timeout
        try:
            async with asyncio.timeout(2 * REDIS_CALL_TIMEOUT_S):
                await self.registry.publish_event(event_type, **fields)
        except (RedisError, OSError) as exc:
            log.warning("could not publish %s: %s", event_type, exc)

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()
        elif self.processes is not None and reason.startswith("SIG"):
            self.processes.hurry()  # a second signal: draining workers hand their jobs back at once

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when a stop was requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        return self.stop_event.is_set()

    # --- startup ----------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)
        if self.supervision == "supervisor":  # the images' StopSignal (systemd's), should it reach us instead
            loop.add_signal_handler(signal.SIGRTMIN + 3, self.request_stop, "SIGRTMIN+3")
        if os.environ.get("APPLIANCE_TEST_HOOKS") == "1":  # the watchdog tests: SIGUSR2 hangs the loop
            loop.add_signal_handler(signal.SIGUSR2, hang_event_loop)
        runner = None
        try:
            self.state.resources = await asyncio.to_thread(
                lambda: host_resources(self.nvml.start(self.state.machine_type == "gpu"))
            )
            self._step("detect_resources", gpu_count=self.state.resources.gpu_count)
            self._detect_machine_type()
            metrics_registry, self.jobs = make_registry(self.state)
            runner, port = await start_server(
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
            self._step("health_server", port=port)
            if not await self._connect():
                return 0  # stopped while waiting for Redis
            res = self.state.resources
            await self._event(
                "machine_startup",
                phase="starting",
                supervision=self.supervision,
                host_info={
                    "hostname": res.hostname,
                    "os": res.os,
                    "cpu_cores": res.cpu_cores,
                    "total_ram_gb": round(res.ram_total_bytes / 2**30, 2),
                    "gpu_count": res.gpu_count,
                    "gpu_models": [g.name for g in res.gpus],
                },
            )
            for step in self.steps:
                await self._event("startup_step", **step)
            try:
                plan = plan_from_settings(self.settings, res.gpu_count)
            except PlanError as exc:
                self.state.phase, self.state.last_error = Phase.FAILED, str(exc)
                await self._event("startup_failed", error=str(exc), elapsed_ms=self._elapsed_ms())
                log.error("%s", exc)
                return 1
            self.state.plan = plan
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
            await self._event("startup_step", **self._step("plan", services=[s.name for s in plan.services]))
            await self._event("startup_step", **self._step("clean_state", **await self._clean_state()))
            await self._register()
            await self._event("startup_step", **self._step("register"))
            await self._wait_services()
            await self._event("startup_step", **self._step("wait_services"))
            return self.exit_status if self.stop_event.is_set() else await self._serve()
        finally:
            await self._shutdown(runner)

    async def _connect(self) -> bool:
        """Connect to Redis, retrying until it answers (systemd's start timeout bounds the wait)."""
        backoff = 0.5
        while True:
            try:
                self.queue = await Queue.connect(
                    self.conn.url,
                    queue_name=self.settings.redis.queue,
                    settings=self.settings.queue,
                    # A pooled connection Redis closed (it restarted) is retried at once instead of failing
                    # the next call with a false "Connection closed by server".
                    retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
                    socket_timeout=REDIS_CALL_TIMEOUT_S,
                    socket_connect_timeout=REDIS_CALL_TIMEOUT_S,
                    **self.conn.client_kwargs(),
                )
                break
            except (RedisError, OSError) as exc:
                # Unreachable, or reached and refused (password, ACL, OOM): the line says which, so an operator
                # fixes the right thing; either may change while we wait, so keep trying.
                line = describe_redis_error(exc, redact_url(self.conn.url))
                refused = redis_error_kind(exc) != "unreachable"
                self.state.last_error = line if refused else f"Redis unreachable: {type(exc).__name__}"
                self.notifier.status(f"starting: waiting for Redis at {self.conn.url}")
                log.warning("%s; retrying", line)
                if await self._sleep(backoff):
                    return False
                backoff = min(backoff * 2, 10.0)
        self.state.redis_ok, self.state.last_error = True, None
        self.registry = MachineRegistry(
            self.queue.client,
            self.state.machine_id,
            ttl_s=self.settings.machine.registration_ttl_s,
            secrets=self.state.secrets,
        )
        self._step("connect_redis")
        return True

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

    async def _register(self) -> None:
        assert self.registry is not None
        await self.registry.register(registration_record(self.settings, self.state, self.supervision))
        self.state.registered = True

    async def _wait_services(self) -> None:
        """Under systemd: until every planned unit is active (or the timeout; then the machine starts degraded).

        appliance.target starts the units; one ordered After= this supervisor waits for our READY=1, so it is
        not waited for here (that would deadlock) and its `service_started` comes later from the status loop.
        In container mode: start the children, then wait until each sent READY=1 or failed (or the timeout)."""
        if self.processes is not None:
            await self.processes.start()
        elif not self.state.managed:
            self.state.units = await self.systemd.states(self.state.plan.units)
            return
        has_comfy = any(s.kind == "comfyui" for s in self.state.plan.services)
        deadline = time.monotonic() + (
            self.settings.comfyui.startup_timeout_s if has_comfy else API_SERVICES_TIMEOUT_S
        )
        while True:
            await self._poll_units()
            pending = (
                self.processes.pending()
                if self.processes
                else [
                    u
                    for u, st in self.state.units.items()
                    if not st.active and SUPERVISOR_UNIT not in st.after
                ]
            )
            if not pending or time.monotonic() > deadline or self.stop_event.is_set():
                break
            self.notifier.status(
                f"starting: waiting for {len(pending)} service(s): {', '.join(sorted(pending))}"
            )
            # Our own deadline bounds the wait; keep systemd's start timeout from cutting it short.
            self.notifier.extend_timeout(5.0)
            if await self._sleep(1.0):
                break

    async def _poll_units(self) -> None:
        self.state.units = (
            self.processes.states() if self.processes else await self.systemd.states(self.state.plan.units)
        )
        for svc in self.state.plan.services:
            st = self.state.units.get(svc.unit)
            if st is None or not st.managed:
                continue
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
            if st.active and svc.unit not in self._started_units:
                self._started_units.add(svc.unit)
                self._failed_units.discard(svc.unit)
                if svc.unit in self._seen_active and not restarted:
                    log.info("%s active again", svc.unit)
                self._seen_active.add(svc.unit)
                await self._event(
                    "service_started",
                    service=svc.name,
                    unit=svc.unit,
                    main_pid=st.main_pid,
                    restarts=st.restarts,
                    elapsed_ms=self._elapsed_ms(),
                )
            elif not st.active:
                if svc.unit in self._started_units and self.state.phase is not Phase.STOPPING:
                    log.warning(
                        "%s is %s (%s), was active%s",
                        svc.unit,
                        st.active_state,
                        st.sub_state,
                        f"; result {st.result}" if st.result and st.result != "success" else "",
                    )
                self._started_units.discard(svc.unit)
                if st.failed and svc.unit not in self._failed_units and not self.processes:
                    self._failed_units.add(svc.unit)
                    log.error(
                        "%s failed for good (result %s after %d restarts); its jobs go back to the queue",
                        svc.unit,
                        st.result or "unknown",
                        st.restarts,
                    )
                    await self._event(
                        "service_failed",
                        service=svc.name,
                        unit=svc.unit,
                        result=st.result,
                        restarts=st.restarts,
                    )

    def _service_failed(self, name: str, error: str) -> None:
        """Container mode: a child failed for good (service_failed is out); the machine fails with it, if so set."""
        self.state.last_error = error
        if self.settings.machine.exit_on_service_failure:
            self.exit_status = SERVICE_FAILED_EXIT_STATUS
            self.request_stop(f"service_failed: {name}")

    # --- running ----------------------------------------------------------------------------------------------

    async def _refresh(self, full: bool) -> None:
        """Read units and workers (and, when `full`, resources and queue stats); Redis errors mark Redis down."""
        await self._poll_units()
        self.state.settle_phase()  # at once: /status must not show a failed unit with the phase from before it
        if full:
            gpus = await self.nvml.poll() if self.nvml.available else []
            res = await asyncio.to_thread(host_resources, None)
            if gpus is not None:
                res.gpus = gpus
            elif self.state.resources:
                res.gpus = self.state.resources.gpus  # NVML hung this round: keep the last reading
            res.nvml_available, res.nvml_error = self.nvml.available, self.nvml.error
            res.driver_version = self.nvml.driver_version
            self.state.resources = res
        assert self.queue is not None and self.registry is not None
        try:
            async with asyncio.timeout(2 * REDIS_CALL_TIMEOUT_S):  # the client's own retries included
                await self._read_queue(full)
            self._redis_answered()
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
        self.state.settle_phase()

    async def _read_queue(self, full: bool) -> None:
        assert self.queue is not None and self.registry is not None
        ids = set(self.state.plan.worker_ids()) | set(self.state.workers)
        self.state.workers = await self.queue.registry.read_workers(ids, await self.queue.server_time_ms())
        self.state.draining = await is_drained(self.queue.client, self.state.machine_id)
        if full:
            self.state.queue_stats = (await self.queue.stats()).model_dump(mode="json")
            await self._read_stops()
            if not await self.registry.refresh(self.state.phase.value):
                await self._register()  # the key expired (Redis restarted or was flushed)

    def _redis_failed(self, exc: BaseException) -> None:
        if self.state.redis_ok:
            self._redis_down_since = time.monotonic()
            log.warning(
                "Redis unreachable (%s: %s); machine degraded, services keep running, retrying",
                type(exc).__name__,
                exc,
            )
        self.state.redis_ok = False
        self.state.last_error = f"Redis unreachable: {type(exc).__name__}"

    def _redis_answered(self) -> None:
        if not self.state.redis_ok and self._redis_down_since is not None:
            log.warning("Redis answers again after %.0fs", time.monotonic() - self._redis_down_since)
            self.state.last_error = None
        self._redis_down_since = None
        self.state.redis_ok = True

    async def publish_status(self, update_type: str = "event_driven") -> None:
        if self.registry is None:
            return
        if self.state.redis_ok:  # while Redis is away the status loop notices its return; no point in waiting
            try:
                async with asyncio.timeout(2 * REDIS_CALL_TIMEOUT_S):
                    await self.registry.publish_status(build_status(self.state, update_type))
            except (RedisError, OSError) as exc:
                log.warning("could not publish status: %s", exc)
        self.notifier.status(status_line(self.state, supervised=self.processes is not None))

    async def _status_loop(self) -> None:
        interval = self.settings.machine.status_interval_s
        poll = min(CHANGE_POLL_S, interval)
        next_full = time.monotonic() + interval
        last = change_signature(self.state)
        while not await self._sleep(poll):
            self._last_loop = time.monotonic()
            full = time.monotonic() >= next_full
            await self._refresh(full)
            await self._check_planned_stop()
            await self._settle_startup()
            sig = change_signature(self.state)
            if full:
                next_full += interval * max(1, int((time.monotonic() - next_full) // interval) + 1)
                await self.publish_status("periodic")
            elif sig != last:
                await self.publish_status("event_driven")
            last = sig

    async def _follow_job_events(self) -> None:
        """Feed the job histograms from the queue's event stream, from now on (history is not replayed)."""
        assert self.queue is not None and self.jobs is not None
        last_id = "$"
        while not self.stop_event.is_set():
            try:
                last_id, events = await self.queue.events.tail(last_id, block_ms=2000, count=500)
            except (RedisError, OSError):
                if await self._sleep(1.0):
                    return
                continue
            for event in events:
                self.jobs.observe(event.entry_id, event.fields)
            self.jobs.worker_ids = set(self.state.plan.worker_ids()) | set(self.state.workers)

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
        every planned service is active and its connector answers (`_settle_startup`, from the status loop)."""
        has_comfy = any(s.kind == "comfyui" for s in self.state.plan.services)
        self._startup_deadline = time.monotonic() + (
            self.settings.comfyui.startup_timeout_s if has_comfy else API_SERVICES_TIMEOUT_S
        )
        await self._refresh(full=False)
        await self._settle_startup()
        self.notifier.ready(status_line(self.state, supervised=self.processes is not None))
        self._last_loop = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self._follow_job_events(), name="job-events"),
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

    async def _settle_startup(self) -> None:
        """While starting: once nothing is missing, or the startup timeout passed, the machine is READY (or
        DEGRADED, saying what is missing) and `startup_complete` goes out."""
        if self.state.phase is not Phase.STARTING:
            return
        missing = self.state.not_ready()
        failed = any(st.failed for st in self.state.units.values())  # for good: no use waiting for it
        if missing and not failed and time.monotonic() < self._startup_deadline:
            return
        self.state.phase = Phase.DEGRADED if missing else Phase.READY
        elapsed = self._elapsed_ms()
        if missing:
            log.warning("started degraded after %.1fs: %s", elapsed / 1000, "; ".join(missing))
        else:
            log.info("ready after %.1fs: %d service(s) active", elapsed / 1000, len(self.state.plan.services))
        res = self.state.resources
        await self._event(
            "startup_complete",
            total_startup_time_ms=elapsed,
            startup_steps=self.steps,
            machine_config={
                "gpu_count": res.gpu_count if res else 0,
                "gpu_memory": round(sum(g.memory_total_bytes for g in res.gpus) / 2**30, 2) if res else 0,
                "gpu_model": res.gpus[0].name if res and res.gpus else None,
                "cpu_cores": res.cpu_cores if res else 0,
                "ram_gb": round(res.ram_total_bytes / 2**30, 2) if res else 0,
                "services": [s.name for s in self.state.plan.services],
            },
            phase=self.state.phase.value,
            missing=missing,
        )
        await self.publish_status("machine_ready")

    async def _check_planned_stop(self) -> None:
        """`systemctl stop appliance.target` stops the workers before us (they are ordered after us): while our
        own stop job waits, that is a planned stop, not a degraded machine."""
        if self.state.phase in (Phase.STOPPING, Phase.FAILED) or not self.state.managed:
            return
        if all(st.active for st in self.state.units.values()):
            return
        if await self.systemd.stop_pending(SUPERVISOR_UNIT):
            self.state.phase = Phase.STOPPING
            self.stop_reason = "planned stop"

    async def _shutdown(self, runner: Any) -> None:
        self.state.phase = Phase.STOPPING if self.state.phase is not Phase.FAILED else Phase.FAILED
        self.notifier.stopping(status_line(self.state, supervised=self.processes is not None))
        log.info("stopping (%s)", self.stop_reason)
        if self.processes is not None:
            await self.processes.stop(self.notifier)
            self.state.units = self.processes.states()
        if self.registry is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.registry.publish_status(build_status(self.state, "shutdown"))
            await self._event(
                "shutdown", reason=self.stop_reason, uptime_ms=int(self.state.uptime_s() * 1000)
            )
            with contextlib.suppress(RedisError, OSError):
                await self.registry.deregister()
        if runner is not None:
            await runner.cleanup()
        if self.queue is not None:
            with contextlib.suppress(Exception):
                await self.queue.close()
        self.nvml.stop()
        # systemd keeps a stopped unit's last STATUS=: let it say how it ended, not "stopping".
        self.notifier.status(
            f"failed: {self.state.last_error}"
            if self.state.phase is Phase.FAILED
            else f"stopped ({self.stop_reason})"
        )
        self.notifier.close()


def res_host(state: MachineState) -> str:
    """The name other machines reach us by when the health server listens on every address."""
    return state.resources.hostname if state.resources else "localhost"
