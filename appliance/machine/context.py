"""What the supervisor's parts share: settings, the machine's state, the notifier, the stop request, and the Redis
handles once connected. The supervisor is one of these; its startup, refresh, unit watching and shutdown parts are
handed it, so none of them imports the supervisor and each keeps only its own bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from appliance.config import Settings
from appliance.machine.metrics import JobMetrics
from appliance.machine.processes import MachineProcesses
from appliance.machine.registry import MachineRegistry
from appliance.machine.resources import Nvml
from appliance.machine.state import MachineState, Phase, Supervision
from appliance.machine.status import build_status, registration_record, status_line
from appliance.machine.systemd import SystemdUnits
from appliance.notify import Notifier
from appliance.queue import Queue

log = logging.getLogger("appliance.machine.supervisor")

#: Our own unit (appliance-machine.service): units ordered after it start only after our READY=1.
SUPERVISOR_UNIT = "appliance-machine.service"
#: Bound on one Redis call (connect, command): an unanswering Redis must not stall the status loop, whose
#: turning is what the watchdog checks (s).
REDIS_CALL_TIMEOUT_S = 5.0


class SupervisorContext:
    """The supervisor's shared parts; `queue`, `registry`, `jobs` and `processes` are set during startup."""

    def __init__(
        self, settings: Settings, state: MachineState, notifier: Notifier, supervision: Supervision
    ) -> None:
        self.settings = settings
        self.state = state
        self.notifier = notifier
        self.supervision = supervision
        self.systemd = SystemdUnits(managed=supervision == "systemd")
        self.nvml = Nvml()
        self.stop_event = asyncio.Event()
        self.stop_reason = "stopped"
        self.exit_status = 0
        self.steps: list[dict[str, Any]] = []
        self.queue: Queue | None = None
        self.registry: MachineRegistry | None = None
        self.jobs: JobMetrics | None = None
        #: The children, in container mode.
        self.processes: MachineProcesses | None = None
        self._t0 = time.monotonic()

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def step(self, name: str, **detail: Any) -> dict[str, Any]:
        step = {"step_name": name, "elapsed_ms": self.elapsed_ms(), **detail}
        self.steps.append(step)
        self.notifier.status(f"starting: {name.replace('_', ' ')} done")
        return step

    def status_line(self) -> str:
        return status_line(self.state, supervised=self.processes is not None)

    async def event(self, event_type: str, **fields: Any) -> None:
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

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when a stop was requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        return self.stop_event.is_set()

    async def register(self) -> None:
        assert self.registry is not None
        await self.registry.register(registration_record(self.settings, self.state, self.supervision))
        self.state.registered = True

    async def publish_status(self, update_type: str = "event_driven") -> None:
        if self.registry is None:
            return
        if self.state.redis_ok:  # while Redis is away the status loop notices its return; no point in waiting
            try:
                async with asyncio.timeout(2 * REDIS_CALL_TIMEOUT_S):
                    await self.registry.publish_status(build_status(self.state, update_type))
            except (RedisError, OSError) as exc:
                log.warning("could not publish status: %s", exc)
        self.notifier.status(self.status_line())
