"""Supervised container mode: `appliance machine` runs the service plan's processes itself, where no systemd does.

Each planned service becomes one child process of the supervisor, started in plan order:
`appliance comfyui --gpu N` for `comfyui@N` and `appliance worker --slot SLOT` for each worker (a GPU worker is
started with its ComfyUI; it waits for ComfyUI to answer on its own). The supervisor is their systemd:

- Readiness: every child gets its own private notify socket as `NOTIFY_SOCKET` (never the supervisor's own, so
  only the supervisor speaks to the real service manager). The children already speak sd_notify: the ComfyUI
  wrapper sends READY=1 once ComfyUI answers, a worker once it is registered with the queue. A child is
  `activating` until its READY=1 and `active` after; STATUS= lines become its `status_text`.
- Restarts: any exit is restarted after `machine.restart_delay_s`, doubled for each quick failure in a row (a
  run shorter than STABLE_AFTER_S) up to `machine.restart_max_delay_s`. After `machine.restart_limit_burst`
  restarts within `machine.restart_limit_interval_s` the next exit leaves the service `failed`
  (result `start-limit-hit`); the workers bound to a failed ComfyUI are stopped with it (systemd's BindsTo=).
- Stop: SIGTERM to the workers first (they drain: running jobs get `worker.drain_grace_s`, then go back to the
  queue), then to ComfyUI; SIGKILL to whatever outlives its stop timeout. A second stop request forwards
  SIGTERM again, which makes draining workers hand their jobs back at once.

Children run in their own session, so a terminal's Ctrl-C reaches only the supervisor, which stops them in order.
Their stdout and stderr are the supervisor's, so container logs show every process. A supervisor killed with
SIGKILL leaves its children to the namespace's PID 1: in a container that is the supervisor itself (or the
runtime's init), so the container ends with it; under systemd KillMode=mixed kills the whole unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.machine.children import Child, child_env, command_for, notify_dir, receiver
from appliance.machine.plan import ServicePlan
from appliance.machine.systemd import UnitState

if TYPE_CHECKING:
    from appliance.config import MachineSettings, Settings
    from appliance.machine.registry import MachineRegistry
    from appliance.notify import Notifier
    from appliance.queue import Queue

log = logging.getLogger(__name__)

#: A run at least this long counts as stable: the restart delay starts over from `restart_delay_s`.
STABLE_AFTER_S = 60.0
#: Seconds a worker may take beyond its drain grace to hand its jobs back and exit (the unit allows 30).
WORKER_STOP_MARGIN_S = 30.0
#: Seconds the ComfyUI wrapper may take to stop (it gives ComfyUI 20 s, then kills it).
COMFYUI_STOP_S = 30.0

ChildCallback = Callable[[Child], Awaitable[None]]


@dataclass(frozen=True)
class RestartPolicy:
    delay_s: float = 2.0
    max_delay_s: float = 60.0
    burst: int = 5
    interval_s: float = 600.0

    @classmethod
    def from_settings(cls, m: MachineSettings) -> RestartPolicy:
        return cls(
            m.restart_delay_s,
            max(m.restart_delay_s, m.restart_max_delay_s),
            m.restart_limit_burst,
            m.restart_limit_interval_s,
        )

    def delay(self, quick_failures: int) -> float:
        """Delay before the next start after `quick_failures` short runs in a row (exponential, capped)."""
        return float(min(self.max_delay_s, self.delay_s * 2 ** max(0, quick_failures - 1)))

    def limit_reached(self, restart_times: deque[float], now: float) -> bool:
        """Whether `burst` restarts happened within `interval_s` of `now` (older ones are dropped)."""
        while restart_times and now - restart_times[0] > self.interval_s:
            restart_times.popleft()
        return len(restart_times) >= self.burst


class ProcessGroup:
    """Starts, restarts and stops the children of one service plan.

    `on_exit` runs after every unexpected exit (the supervisor hands a dead worker's jobs back), `on_failed`
    once when a service has failed for good (service_failed, and maybe the whole machine's exit)."""

    def __init__(
        self,
        plan: ServicePlan,
        policy: RestartPolicy,
        *,
        on_exit: ChildCallback,
        on_failed: ChildCallback,
        environ: Mapping[str, str] | None = None,
        python: str = sys.executable,
        config_path: str | None = None,
        worker_stop_s: float = 30.0 + WORKER_STOP_MARGIN_S,
    ) -> None:
        self.plan = plan
        self.policy = policy
        self.on_exit = on_exit
        self.on_failed = on_failed
        self.environ = dict(os.environ if environ is None else environ)
        self.python = python
        self.config_path = config_path
        self.worker_stop_s = worker_stop_s
        self.children: list[Child] = []
        self._dir: str | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Open every child's notify socket and start the children in plan order."""
        loop = asyncio.get_running_loop()
        self._dir = notify_dir()
        for i, svc in enumerate(self.plan.services):
            child = Child(svc, command_for(svc, self.python), os.path.join(self._dir, f"{i}.sock"))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(child.notify_path)
            transport, _ = await loop.create_datagram_endpoint(receiver(child), sock=sock)
            self._transports.append(transport)
            self.children.append(child)
        for child in self.children:
            self._tasks.append(
                asyncio.create_task(self._keep_running(child), name=f"child {child.service.name}")
            )

    def states(self) -> dict[str, UnitState]:
        return {c.service.unit: c.unit_state() for c in self.children}

    def settled(self) -> bool:
        return all(c.settled for c in self.children)

    def pending(self) -> list[str]:
        return [c.service.name for c in self.children if not c.settled]

    async def _spawn(self, child: Child) -> None:
        child.active_state, child.sub_state, child.status_text = "activating", "start", ""
        child.exit_status = None
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child_env(self.environ, child.notify_path, self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        child.started_monotonic = time.monotonic()
        log.info("started %s (pid %s): %s", child.service.name, child.proc.pid, " ".join(child.argv[1:]))

    async def _keep_running(self, child: Child) -> None:
        while not (self._stopping.is_set() or child.disabled):
            try:
                await self._spawn(child)
                assert child.proc is not None
                code: int | None = await child.proc.wait()
            except OSError as exc:
                log.error("cannot start %s: %s", child.service.name, exc)
                code = None
            if self._stopping.is_set() or child.disabled:
                break
            ran = time.monotonic() - child.started_monotonic
            child.exit_status = code
            child.result = (
                "success" if code == 0 else "signal" if code is not None and code < 0 else "exit-code"
            )
            child.status_text = (
                f"killed by {signal.Signals(-code).name}"
                if code is not None and code < 0
                else f"exited with status {code}"
            )
            child.active_state, child.sub_state = "activating", "auto-restart"
            log.warning("%s %s after %.1fs", child.service.name, child.status_text, ran)
            await self._call(self.on_exit, child)
            if self.policy.limit_reached(child.restart_times, time.monotonic()):
                await self._fail(child)
                return
            child.quick_failures = 0 if ran >= STABLE_AFTER_S else child.quick_failures + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.policy.delay(child.quick_failures))
            if self._stopping.is_set() or child.disabled:
                break
            child.restart_times.append(time.monotonic())
            child.restarts += 1
        if child.active_state != "failed":
            child.active_state, child.sub_state = "inactive", "dead"

    async def _fail(self, child: Child) -> None:
        """The restart limit is hit: the child stays failed, and the services bound to it are stopped with it."""
        child.active_state, child.sub_state, child.result = "failed", "failed", "start-limit-hit"
        log.error(
            "%s failed: %d restarts within %gs",
            child.service.name,
            len(child.restart_times),
            self.policy.interval_s,
        )
        await self._call(self.on_failed, child)
        for dep in self.plan.dependents(child.service):
            await self._end(next(c for c in self.children if c.service is dep), "dependency")

    async def _call(self, callback: ChildCallback, child: Child) -> None:
        try:
            await callback(child)
        except Exception:  # a callback's failure (Redis down) must not end the supervision of the child
            log.exception(
                "handling %s of %s failed",
                "exit" if callback is self.on_exit else "failure",
                child.service.name,
            )

    async def _end(self, child: Child, result: str) -> None:
        """Stop a child for good (its ComfyUI failed): no restart; its jobs went back with the ComfyUI's."""
        child.disabled, child.result = True, result
        child.signal(signal.SIGTERM)
        log.warning("stopping %s: %s", child.service.name, result)

    def hurry(self) -> None:
        """A second stop request: SIGTERM again, so draining workers hand their jobs back now."""
        for child in self.children:
            child.signal(signal.SIGTERM)

    async def stop(self, notifier: Notifier | None = None) -> None:
        """Stop every child: workers first, then ComfyUI; SIGKILL after each group's stop timeout. The wait is
        reported on `notifier` (STATUS=, and EXTEND_TIMEOUT_USEC: the children's timeouts bound it)."""
        self._stopping.set()
        workers = [c for c in self.children if c.service.kind == "worker"]
        others = [c for c in self.children if c.service.kind != "worker"]
        for group, timeout in ((workers, self.worker_stop_s), (others, COMFYUI_STOP_S)):
            await self._stop_group(group, timeout, notifier)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self._transports:
            transport.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _stop_group(self, group: list[Child], timeout_s: float, notifier: Notifier | None) -> None:
        running = [c for c in group if c.pid is not None]
        for child in running:
            child.active_state, child.sub_state = "deactivating", "stop-sigterm"
            if not child.disabled:  # a disabled child got its SIGTERM already; a second would mean "hurry"
                child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while (left := [c for c in running if c.pid is not None]) and time.monotonic() < deadline:
            if notifier is not None:
                notifier.status(f"stopping: waiting for {', '.join(c.service.name for c in left)}")
                notifier.extend_timeout(5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(c.proc.wait() for c in left if c.proc is not None)),
                    min(1.0, max(0.0, deadline - time.monotonic())),
                )
        for child in running:
            if child.pid is not None:
                log.warning("%s did not stop within %gs: SIGKILL", child.service.name, timeout_s)
                child.signal(signal.SIGKILL)
                await child.proc.wait()  # type: ignore[union-attr]
            if child.active_state != "failed":
                child.active_state, child.sub_state = "inactive", "dead"


class MachineProcesses(ProcessGroup):
    """The group as the supervisor runs it. A worker that exited cannot renew its leases, so its jobs go back at
    once (not at lease expiry). A service that failed for good gets what `appliance machine on-failure` does
    under systemd, in-process: its workers' jobs go back (a ComfyUI's failure takes its worker's), then
    `service_failed` is published and `on_failed(name, error)` tells the supervisor."""

    def __init__(
        self,
        settings: Settings,
        plan: ServicePlan,
        queue: Queue,
        registry: MachineRegistry,
        *,
        on_failed: Callable[[str, str], None],
        config_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            plan,
            RestartPolicy.from_settings(settings.machine),
            on_exit=self._exited,
            on_failed=self._failed,
            config_path=config_path,
            worker_stop_s=settings.worker.drain_grace_s + WORKER_STOP_MARGIN_S,
            **kwargs,
        )
        self.queue = queue
        self.registry = registry
        self.notify_failed = on_failed

    async def _exited(self, child: Child) -> None:
        if (wid := child.service.worker_id(self.plan.machine_id)) and (
            n := await self.queue.return_jobs_of_worker(wid, "worker_exited")
        ):
            log.warning("%s exited holding %d job(s); handed back", wid, n)

    async def _failed(self, child: Child) -> None:
        from appliance.machine.onfailure import resolve_unit

        try:
            failed = resolve_unit(self.plan.machine_id, child.service.unit)
            returned = {
                wid: await self.queue.return_jobs_of_worker(wid, "service_failed")
                for wid in failed.worker_ids
            }
            await self.registry.publish_event(
                "service_failed",
                service=failed.service,
                unit=failed.unit,
                reason="restart limit reached",
                result=child.result,
                exit_status=child.exit_status,
                restarts=child.restarts,
                active_state="failed",
                jobs_returned=returned,
            )
        finally:  # Redis down or not, the machine's fate is decided
            self.notify_failed(child.service.name, f"{child.service.name} failed: {child.status_text}")
