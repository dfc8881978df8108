"""Autoscaling signals per pool: backlog, oldest wait, run-time percentiles, success rate, desired machines.

Everything is read from what the queue and the machines already keep (no scans of all jobs):
- waiting, oldest wait, unworkable: `Queue.stats()` (per requirement shape; a shape's pool is its
  `requirements.pool`, a shape without one counts toward `classifier.default_pool`);
- active: the lease index, each leased job's shape from the queue's `meta` column;
- run times and outcomes: the queue's event stream entries of the last `window_s` seconds (`completed` with
  `duration_ms`; `failed`, `dead`; `retrying`), each job's pool from its shape;
- machines: the `machines` registry, live while `machine:<id>:info` exists, pool from its capabilities.

The desired machine count (docs/monitoring.md, "Signals"):

    work_s   = (waiting + active) × p50_duration_s
    drain    = ceil(work_s / (target_drain_s × machine_capacity))     # machines to clear the backlog in time
    busy     = ceil(active / machine_capacity)                        # never below what is running now
    floor    = 1 if waiting + active > 0 else 0                       # scale from zero when work arrives
    desired  = clamp(max(drain, busy, floor), min_machines, max_machines)

Without a completed job in the window there is no p50: then `drain` is left out (desired = max(busy, floor)
clamped), so an idle pool's first job asks for one machine and no number is invented.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.config import PoolSettings, Settings
from appliance.queue.events import AttemptEnd, EventKind

if TYPE_CHECKING:
    from appliance.queue import Queue

#: Default look-back for run-time percentiles and success rate (s).
DEFAULT_WINDOW_S = 900.0
#: Most stream entries read per refresh (the stream is capped by queue.events_maxlen anyway).
MAX_EVENTS = 50_000
#: How an attempt ended (the queue's one event -> meaning map, appliance.queue.events) -> the count it adds to.
OUTCOMES = {AttemptEnd.COMPLETED: "completed", AttemptEnd.FAILED: "failed", AttemptEnd.RETRIED: "retried"}


@dataclass
class PoolSignals:
    pool: str
    configured: bool
    waiting: int = 0
    active: int = 0
    unworkable: int = 0
    oldest_wait_s: float | None = None
    machines: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    duration_p50_s: float | None = None
    duration_p90_s: float | None = None
    duration_p99_s: float | None = None
    success_ratio: float | None = None
    desired_machines: int = 0
    #: Which term of the formula decided `desired_machines` (drain, busy, floor, min, max, idle).
    reason: str = "idle"
    target_drain_s: float = 0.0
    machine_capacity: int = 1
    min_machines: int = 0
    max_machines: int | None = None


@dataclass
class PoolReport:
    queue: str
    window_s: float
    generated_at_ms: int
    pools: list[PoolSignals] = field(default_factory=list)
    #: Live machines that declare no pool: they serve every pool and are not counted in any pool's `machines`.
    shared_machines: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def pool(self, name: str) -> PoolSignals | None:
        return next((p for p in self.pools if p.pool == name), None)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def desired_machines(waiting: int, active: int, p50_s: float | None, pool: PoolSettings) -> tuple[int, str]:
    """The desired machine count of a pool and the term that decided it (see the module docstring)."""
    capacity = max(1, pool.machine_capacity)
    candidates: list[tuple[int, str]] = [(0, "idle")]
    if waiting + active > 0:
        candidates.append((1, "floor"))
    if active:
        candidates.append((math.ceil(active / capacity), "busy"))
    if p50_s is not None and waiting + active > 0:
        work_s = (waiting + active) * p50_s
        candidates.append((math.ceil(work_s / (pool.target_drain_s * capacity)), "drain"))
    # Highest wins; on a tie the more informed term names the reason (drain > busy > floor > idle).
    order = {"idle": 0, "floor": 1, "busy": 2, "drain": 3}
    value, reason = max(candidates, key=lambda c: (c[0], order[c[1]]))
    if value < pool.min_machines:
        return pool.min_machines, "min"
    if pool.max_machines is not None and value > pool.max_machines:
        return pool.max_machines, "max"
    return value, reason


class _Rows:
    """The report's rows, created on first use with their pool's settings (the default pool for None)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_pool = settings.classifier.default_pool
        self.pools: dict[str, PoolSignals] = {}
        for name in settings.pools:
            self(name)

    def __call__(self, name: str | None) -> PoolSignals:
        name = name or self.default_pool
        if name not in self.pools:
            cfg = self.settings.pools.get(name)
            conf = cfg or PoolSettings()
            self.pools[name] = PoolSignals(
                pool=name,
                configured=cfg is not None,
                target_drain_s=conf.target_drain_s,
                machine_capacity=conf.machine_capacity,
                min_machines=conf.min_machines,
                max_machines=conf.max_machines,
            )
        return self.pools[name]


async def read_pool_signals(
    queue: Queue, settings: Settings, *, window_s: float = DEFAULT_WINDOW_S, now_ms: int | None = None
) -> PoolReport:
    """Compute every pool's signals from Redis (a handful of pipelined round trips)."""
    now = now_ms if now_ms is not None else await queue.server_time_ms()
    row = _Rows(settings)
    shape_pool = await _waiting(queue, row)

    # Active jobs: lease index -> each job's shape.
    leased = await queue.reader.leased()
    job_pool = await _pools_of_jobs(queue, leased, shape_pool, row.default_pool)
    for job_id in leased:
        row(job_pool.get(job_id)).active += 1

    await _outcomes(queue, row, shape_pool, job_pool, max(0, now - int(window_s * 1000)))
    shared = 0
    for pool in await queue.registry.live_machine_pools():
        if pool:
            row(pool).machines += 1
        else:
            shared += 1

    for r in row.pools.values():
        final = r.completed + r.failed
        r.success_ratio = r.completed / final if final else None
        conf = settings.pools.get(r.pool) or PoolSettings()
        r.desired_machines, r.reason = desired_machines(r.waiting, r.active, r.duration_p50_s, conf)

    pools = row.pools
    ordered = [pools[n] for n in settings.pools] + [
        p for n, p in sorted(pools.items()) if n not in settings.pools
    ]
    return PoolReport(
        queue=queue.name, window_s=window_s, generated_at_ms=now, pools=ordered, shared_machines=shared
    )


async def _waiting(queue: Queue, row: _Rows) -> dict[str, str]:
    """Waiting, unworkable and oldest wait per pool from `Queue.stats()`; returns every shape's pool."""
    stats = await queue.stats()
    shape_pool: dict[str, str] = {}
    for shape in stats.shapes:
        pool_name = str(shape.requirements.get("pool") or row.default_pool)
        shape_pool[shape.shape] = pool_name
        r = row(pool_name)
        r.waiting += shape.waiting
        if shape.waiting and not shape.live_workers:
            r.unworkable += shape.waiting
        if shape.oldest_wait_s is not None and shape.waiting:
            r.oldest_wait_s = max(r.oldest_wait_s or 0.0, shape.oldest_wait_s)
    for shape_id, pool in (await queue.registry.shape_pools(row.default_pool)).items():
        shape_pool.setdefault(shape_id, pool)
    return shape_pool


async def _outcomes(
    queue: Queue, row: _Rows, shape_pool: dict[str, str], job_pool: dict[str, str], start_ms: int
) -> None:
    """Outcomes and run times of the window, from the event stream (entry ids are ms timestamps)."""
    finished: list[tuple[str, str, float | None]] = []
    for event in await queue.events.window(start_ms, MAX_EVENTS):
        ends = event.meaning.ends if event.meaning is not None else None
        if event.kind is EventKind.SUBMITTED and event.job and event.fields.get("shape"):
            job_pool[event.job] = shape_pool.get(event.fields["shape"], row.default_pool)
        elif ends in OUTCOMES and event.job:
            duration = event.number("duration_ms") if ends is AttemptEnd.COMPLETED else None
            finished.append((event.job, OUTCOMES[ends], duration / 1000 if duration is not None else None))
    missing = [job for job, _, _ in finished if job not in job_pool]
    job_pool.update(await _pools_of_jobs(queue, missing, shape_pool, row.default_pool))
    durations: dict[str, list[float]] = {}
    for job, outcome, duration in finished:
        r = row(job_pool.get(job))
        setattr(r, outcome, getattr(r, outcome) + 1)
        if duration is not None:
            durations.setdefault(r.pool, []).append(max(0.0, duration))
    for r in row.pools.values():
        values = sorted(durations.get(r.pool, []))
        r.duration_p50_s, r.duration_p90_s, r.duration_p99_s = (percentile(values, q) for q in (50, 90, 99))


async def _pools_of_jobs(
    queue: Queue, job_ids: list[str], shape_pool: dict[str, str], default_pool: str
) -> dict[str, str]:
    # A record that expired already (no shape): the default pool is the best guess left.
    shapes = await queue.reader.shapes_of_jobs(job_ids)
    return {job_id: shape_pool.get(shape, default_pool) for job_id, shape in shapes.items()}


def report_age_s(report: PoolReport) -> float:
    return max(0.0, time.time() - report.generated_at_ms / 1000)
