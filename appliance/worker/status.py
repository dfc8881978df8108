"""What the worker says about itself: one line for systemd (`STATUS=`), one record for the queue's worker
status (read by the machine supervisor and the monitor). Both come from the same snapshot, so they agree.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from appliance.notify import Notifier
from appliance.queue import WorkerSession
from appliance.worker.redislink import RedisLink, is_unreachable

log = logging.getLogger(__name__)

#: A record is re-published at least this often even when nothing changed (s), so readers see it is alive.
PERIODIC_S = 5.0
#: Progress, and which jobs run, re-publish at most this often (s); state changes go out at once. A worker
#: finishing hundreds of jobs a second writes its record about once a second, not once per job.
PROGRESS_EVERY_S = 1.0


class Phase(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    #: Fleet drain (`appliance fleet drain`): up and healthy, taking no new jobs.
    DRAINED = "drained"
    SERVICE_DOWN = "service_down"
    REDIS_DOWN = "redis_down"
    #: Stopping on a signal: no new jobs, running ones finish or go back.
    DRAINING = "draining"


@dataclass
class Snapshot:
    phase: Phase
    connector: str
    slot: str
    concurrency: int
    service_healthy: bool
    drained: bool
    redis_ok: bool
    jobs: list[dict[str, Any]] = field(default_factory=list)
    #: Jobs this process completed and failed since it started (what "idle" has to say about work done).
    done: int = 0
    failed: int = 0

    def text(self) -> str:
        """The one-line STATUS= text."""
        n = len(self.jobs)
        jobs = f"{n} job{'s' if n != 1 else ''}"
        if self.phase is Phase.DRAINING:
            return f"draining, {jobs} left" if n else "draining"
        if self.phase is Phase.REDIS_DOWN:
            return f"redis unreachable, retrying ({jobs} running)" if n else "redis unreachable, retrying"
        if self.phase is Phase.SERVICE_DOWN:
            return f"service down: {self.connector} not answering" + (f" ({jobs} running)" if n else "")
        if self.phase is Phase.DRAINED:
            return f"drained, {jobs}"
        if self.phase is Phase.STARTING:
            return "starting"
        if n == 1:
            return f"running job {self.jobs[0]['id']} ({self.jobs[0]['progress']:.0f}%)"
        if n:
            return f"running {jobs}"
        idle = f"idle, {self.done} job{'s' if self.done != 1 else ''} done"
        return idle + (f", {self.failed} failed" if self.failed else "")

    def record(self) -> dict[str, Any]:
        """The worker status record (`WorkerSession.set_status`); never holds secrets or payloads."""
        return {
            "state": self.phase.value,
            "status": self.text(),
            "connector": self.connector,
            "slot": self.slot,
            "concurrency": self.concurrency,
            "service_healthy": self.service_healthy,
            "drained": self.drained,
            "redis_ok": self.redis_ok,
            "jobs": self.jobs,
            "current_job_id": self.jobs[0]["id"] if self.jobs else None,
            "pid": os.getpid(),
        }

    def key(self) -> tuple[Any, ...]:
        """What counts as a change worth publishing at once (progress and the running jobs' ids are not; a job
        being stopped is)."""
        return (
            self.phase,
            self.service_healthy,
            self.drained,
            self.redis_ok,
            tuple((j["id"], j["stopping"]) for j in self.jobs if "stopping" in j),
        )

    def churn(self) -> tuple[Any, ...]:
        """What changes all the time on a busy worker: published at most every PROGRESS_EVERY_S."""
        return tuple((j["id"], j["progress"]) for j in self.jobs)


class StatusPublisher:
    """Sends STATUS= to systemd and the record to the queue, on change and periodically."""

    def __init__(self, notifier: Notifier, link: RedisLink) -> None:
        self.notifier = notifier
        self.link = link
        self.session: WorkerSession | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._last_progress: tuple[Any, ...] = ()
        self._last_publish = 0.0

    async def publish(self, snap: Snapshot, *, force: bool = False) -> None:
        self.notifier.status(snap.text())
        if self.session is None:
            return
        now = time.monotonic()
        key = snap.key()
        progress = snap.churn()
        due = (
            force
            or key != self._last_key
            or now - self._last_publish >= PERIODIC_S
            or (progress != self._last_progress and now - self._last_publish >= PROGRESS_EVERY_S)
        )
        if not due or (not self.link.up and not force):
            return
        try:
            async with asyncio.timeout(5):
                await self.session.set_status(snap.record())
        except Exception as exc:
            if not is_unreachable(exc):
                log.exception("publishing the worker status failed")
            else:
                self.link.mark_down(exc)
            return
        self._last_key, self._last_progress, self._last_publish = key, progress, now
