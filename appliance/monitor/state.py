"""What the monitor knows about the fleet: machines, recent jobs, queue and pool numbers, throughput series.

Pure bookkeeping, no I/O: the feed (appliance.monitor.feed) applies what it reads from Redis, the web app sends
`snapshot()` to a new client and the deltas the apply methods return to connected ones.

Machines go offline when their last status is older than 2 × their status interval, when their registration
(`machine:<id>:info`) expired, or when they published a `shutdown` status. Time is the monitor's own clock
(when a status arrived), so clock skew between machines and the monitor does not matter.

Job events arrive twice when the queue publishes to both the stream and pub/sub (the default). The stream is
ordered and resumable, so it alone moves a job's status then; the pub/sub copy only adds what the stream entry
lacks (the error text, the progress message). With `queue.events = pubsub` the pub/sub messages do everything.
A finished job stays finished. Throughput and latency series count each attempt's end once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.queue.events import AttemptEnd, EventKind, Meaning, meaning, status_after
from appliance.queue.models import JobStatus
from appliance.queue.records import number

#: A machine silent for this many status intervals is offline.
OFFLINE_INTERVALS = 2.0
#: Offline machines are dropped from the view after this long (s).
FORGET_AFTER_S = 3600.0
#: Jobs kept in the live list.
MAX_JOBS = 200
#: Lifecycle events kept per machine.
MAX_MACHINE_EVENTS = 20
#: Series: bucket width (s) and number of buckets (5 s × 60 = the last 5 minutes).
BUCKET_S = 5
BUCKETS = 60

FINISHED = {s.value for s in JobStatus if s.finished}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class JobView:
    id: str
    service: str = ""
    shape: str = ""
    status: str = "pending"
    attempt: int = 0
    percent: float = 0.0
    message: str | None = None
    worker: str | None = None
    error: str | None = None
    submitted_ms: int | None = None
    claimed_ms: int | None = None
    finished_ms: int | None = None
    duration_ms: float | None = None
    wait_ms: float | None = None
    updated_ms: int = 0


@dataclass
class MachineView:
    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    #: Monitor time (ms) the latest status arrived; 0 when only the registration is known.
    seen_ms: int = 0
    registered: bool = True
    events: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    online: bool = False
    offline_reason: str | None = "no status yet"


@dataclass
class Series:
    """Completed/failed counts and run-time p50 per bucket, for the sparklines."""

    completed: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    durations: dict[int, list[float]] = field(default_factory=dict)

    def add(self, at_ms: int, outcome: str, duration_ms: float | None) -> None:
        b = at_ms // (BUCKET_S * 1000)
        target = self.completed if outcome == "completed" else self.failed
        target[b] = target.get(b, 0) + 1
        if duration_ms is not None:
            self.durations.setdefault(b, []).append(duration_ms)

    def render(self, at_ms: int) -> dict[str, Any]:
        last = at_ms // (BUCKET_S * 1000)
        first = last - BUCKETS + 1
        for store in (self.completed, self.failed, self.durations):
            for b in [b for b in store if b < first]:
                del store[b]
        p50 = []
        for b in range(first, last + 1):
            values = sorted(self.durations.get(b, []))
            p50.append(values[(len(values) - 1) // 2] / 1000 if values else None)
        return {
            "bucket_s": BUCKET_S,
            "end_ms": (last + 1) * BUCKET_S * 1000,
            "completed": [self.completed.get(b, 0) for b in range(first, last + 1)],
            "failed": [self.failed.get(b, 0) for b in range(first, last + 1)],
            "latency_p50_s": p50,
        }


class MonitorState:
    def __init__(
        self, queue_name: str, default_interval_s: float = 15.0, other_queues: list[str] | None = None
    ) -> None:
        self.queue_name = queue_name
        #: The fleet's other queues (`worker.queues`, `monitor --queues`): their numbers, not their jobs.
        self.other_queues = [q for q in dict.fromkeys(other_queues or []) if q != queue_name]
        self.other_stats: dict[str, dict[str, Any] | None] = dict.fromkeys(self.other_queues)
        self.default_interval_s = default_interval_s
        self.machines: dict[str, MachineView] = {}
        self.jobs: OrderedDict[str, JobView] = OrderedDict()
        self.queue_stats: dict[str, Any] | None = None
        self.pools: dict[str, Any] | None = None
        self.shape_pool: dict[str, str] = {}
        self.series = Series()
        self.redis_ok = False
        self.redis_error: str | None = None
        self.last_stream_id = "0-0"

    # --- machines ---------------------------------------------------------------------------------------------

    def apply_machine_status(self, payload: dict[str, Any], seen_ms: int | None = None) -> MachineView | None:
        mid = payload.get("machine_id")
        if not isinstance(mid, str) or not mid:
            return None
        view = self.machines.setdefault(mid, MachineView(mid))
        view.payload = payload
        view.seen_ms = seen_ms if seen_ms is not None else now_ms()
        if payload.get("update_type") != "shutdown":
            view.registered = True
        self._evaluate(view, view.seen_ms)
        return view

    def apply_machine_event(self, event: dict[str, Any], seen_ms: int | None = None) -> MachineView | None:
        mid = event.get("machine_id")
        if not isinstance(mid, str) or not mid:
            return None
        view = self.machines.setdefault(mid, MachineView(mid))
        view.events = ([*view.events, event])[-MAX_MACHINE_EVENTS:]
        return view

    def set_registration(self, mid: str, info: dict[str, Any] | None) -> MachineView | None:
        """The machine's registration as last read (None: expired or deregistered)."""
        view = self.machines.get(mid)
        if view is None:
            if info is None:
                return None
            view = self.machines[mid] = MachineView(mid)
        view.registered = info is not None
        if info:
            view.info = info
        return view

    def interval_s(self, view: MachineView) -> float:
        value = number(view.payload.get("status_interval_s"))
        return value if value and value > 0 else self.default_interval_s

    def _evaluate(self, view: MachineView, at_ms: int) -> bool:
        """Recompute online/offline; True when it changed."""
        before = (view.online, view.offline_reason)
        limit_ms = OFFLINE_INTERVALS * self.interval_s(view) * 1000
        if view.payload.get("update_type") == "shutdown":
            view.online, view.offline_reason = False, "shut down"
        elif not view.registered:
            view.online, view.offline_reason = False, "registration expired"
        elif not view.seen_ms:
            view.online, view.offline_reason = False, "no status yet"
        elif at_ms - view.seen_ms > limit_ms:
            view.online, view.offline_reason = False, f"silent for {(at_ms - view.seen_ms) / 1000:.0f}s"
        else:
            view.online, view.offline_reason = True, None
        return before[0] != view.online

    def tick(self, at_ms: int | None = None) -> list[str]:
        """Re-evaluate every machine; returns the ids whose online state changed. Forgets long-gone ones."""
        at = at_ms if at_ms is not None else now_ms()
        changed = [mid for mid, view in self.machines.items() if self._evaluate(view, at)]
        for mid in [
            m
            for m, v in self.machines.items()
            if not v.online and v.seen_ms and at - v.seen_ms > FORGET_AFTER_S * 1000
        ]:
            del self.machines[mid]
        return changed

    def machine_view(self, view: MachineView, at_ms: int | None = None) -> dict[str, Any]:
        at = at_ms if at_ms is not None else now_ms()
        p = view.payload
        status = p.get("status") or {}
        capabilities = (
            view.info.get("capabilities") if isinstance(view.info.get("capabilities"), dict) else {}
        )
        return {
            "id": view.id,
            "online": view.online,
            "offline_reason": view.offline_reason,
            "age_s": round((at - view.seen_ms) / 1000, 1) if view.seen_ms else None,
            "seen_ms": view.seen_ms,
            "interval_s": self.interval_s(view),
            "type": p.get("machine_type") or view.info.get("machine_type"),
            "pool": p.get("pool") or (capabilities or {}).get("pool"),
            "health_url": p.get("health_url") or view.info.get("health_url"),
            "healthy": p.get("healthy"),
            "ready": p.get("ready"),
            "draining": p.get("draining"),
            "update_type": p.get("update_type"),
            "supervision": p.get("supervision"),
            "machine": status.get("machine") or {"phase": view.info.get("phase")},
            "services": status.get("services") or {},
            "workers": status.get("workers") or {},
            "gpus": p.get("gpus") or [],
            "resources": p.get("resources") or {},
            "events": view.events[-5:],
        }

    # --- jobs -------------------------------------------------------------------------------------------------

    def apply_job_event(
        self, fields: dict[str, Any], at_ms: int | None = None, *, details_only: bool = False
    ) -> JobView | None:
        """Apply one lifecycle event (stream entry fields or a pub/sub message); returns the job if it changed.
        `details_only`: a pub/sub copy of an event the stream delivers too (adds error text, progress message)."""
        event = EventKind.parse(fields.get("event"))
        job_id = fields.get("job") or fields.get("job_id")
        means = meaning(event)
        if (
            event is None
            or means is None
            or means.status is None
            or not isinstance(job_id, str)
            or not job_id
        ):
            return None
        if fields.get("queue") not in (None, self.queue_name):
            return None
        at = at_ms if at_ms is not None else now_ms()
        job = self.jobs.get(job_id)
        if job is None and details_only:
            return None
        if job is None:
            job = JobView(job_id)
            self.jobs[job_id] = job
        before = asdict(job)
        if fields.get("service"):
            job.service = str(fields["service"])
        if fields.get("shape"):
            job.shape = str(fields["shape"])
        self._move(job, event, means, fields, at, details_only)
        changed = asdict(job) != before
        if changed:
            job.updated_ms = at
            self.jobs.move_to_end(job_id, last=False)
            while len(self.jobs) > MAX_JOBS:
                self.jobs.popitem(last=True)
        return job if changed else None

    def _move(
        self,
        job: JobView,
        event: EventKind,
        means: Meaning,
        fields: dict[str, Any],
        at: int,
        details_only: bool,
    ) -> None:
        """What one event changes of a known job (the caller compares before and after)."""
        attempt = int(number(fields.get("attempt")) or 0)
        raw_progress = fields.get("progress")
        progress: dict[str, Any] = raw_progress if isinstance(raw_progress, dict) else {}
        if details_only:
            self._error_from(job, fields)
            if (
                event is EventKind.PROGRESS
                and job.status in ("claimed", "running")
                and progress.get("message")
            ):
                job.message = str(progress["message"])[:200]
        elif job.status in FINISHED:
            # Terminal: only details may still arrive (the pub/sub copy carries the error text).
            self._error_from(job, fields)
        elif event is EventKind.SUBMITTED:
            job.submitted_ms = job.submitted_ms or at
            if job.status == "pending" and status_after(event, fields) is JobStatus.BLOCKED:
                job.status = "blocked"  # waits for its parents: not in line until `unblocked`
        elif event is EventKind.UNBLOCKED:
            if job.status == "blocked":  # its last parent completed: in line now
                job.status = "pending"
        elif event is EventKind.CLAIMED:
            job.attempt = max(attempt, job.attempt)
            job.status, job.percent, job.message = "claimed", 0.0, None
            job.claimed_ms, job.wait_ms = at, number(fields.get("wait_ms"))
            job.worker = str(fields.get("worker") or "") or None
        elif event is EventKind.PROGRESS:
            self._progress(job, fields, progress)
        else:
            status = means.status.value if means.status is not None else job.status
            if means.back_in_line:  # retrying, released, lease_expired: back in line for another attempt
                job.status, job.percent = "pending", 0.0
                job.attempt = max(attempt, job.attempt)
                job.message = event.value + (f": {fields['reason']}" if fields.get("reason") else "")
            else:
                if means.ends in (AttemptEnd.COMPLETED, AttemptEnd.FAILED):
                    self.series.add(
                        at,
                        "completed" if means.ends is AttemptEnd.COMPLETED else "failed",
                        number(fields.get("duration_ms")),
                    )
                job.status = status
                job.finished_ms = at
                if status == "completed":
                    job.percent, job.message = 100.0, None
                    job.duration_ms = number(fields.get("duration_ms"))
            self._error_from(job, fields)

    @staticmethod
    def _progress(job: JobView, fields: dict[str, Any], progress: dict[str, Any]) -> None:
        percent = number(fields.get("percent"))
        if percent is None:
            percent = number(progress.get("percent"))
        if job.status in ("claimed", "running", "pending"):
            job.status = "running"
            job.worker = str(fields.get("worker") or job.worker or "") or None
            if percent is not None:
                job.percent = percent
            if progress.get("message"):
                job.message = str(progress["message"])[:200]

    @staticmethod
    def _error_from(job: JobView, fields: dict[str, Any]) -> None:
        error = fields.get("error")
        if isinstance(error, dict):
            error = error.get("message") or error.get("error")
        if error:
            job.error = str(error)[:500]

    def set_job_error(self, job_id: str, error: str | None) -> JobView | None:
        job = self.jobs.get(job_id)
        if job is None or not error or job.error == error:
            return None
        job.error = error[:500]
        return job

    def job_view(self, job: JobView) -> dict[str, Any]:
        out = asdict(job)
        out["pool"] = self.shape_pool.get(job.shape)
        return out

    # --- snapshot ---------------------------------------------------------------------------------------------

    def snapshot(self, at_ms: int | None = None) -> dict[str, Any]:
        at = at_ms if at_ms is not None else now_ms()
        return {
            "type": "full_state_snapshot",
            "queue": self.queue_name,
            "now_ms": at,
            "redis": {"ok": self.redis_ok, "error": self.redis_error},
            "machines": [
                self.machine_view(v, at) for v in sorted(self.machines.values(), key=lambda v: v.id)
            ],
            "jobs": [self.job_view(j) for j in self.jobs.values()],
            "queue_stats": self.queue_stats,
            "other_queues": self.other_stats,
            "pools": self.pools,
            "series": self.series.render(at),
        }
