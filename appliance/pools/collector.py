"""Pool signals as Prometheus metrics: a collector with a cached, asynchronously refreshed report.

Prometheus' `collect()` is synchronous and runs inside the scrape, so it must never touch Redis: it renders the
last report. The report is refreshed by `start()` (a background task) and/or `ensure_fresh()` awaited before
rendering; concurrent refreshes share one computation.

    collector = PoolSignalsCollector(queue, settings)
    registry.register(collector)
    await collector.start()          # refresh every `interval_s`
    ...
    await collector.close()

Pool signals describe the whole fleet: every exporter that registers the collector reports the same values, so
aggregate with `max by (pool)` (or register it on one process only, e.g. `appliance monitor`'s /metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.config import Settings
from appliance.pools.signals import DEFAULT_WINDOW_S, PoolReport, read_pool_signals

if TYPE_CHECKING:
    from appliance.queue import Queue

log = logging.getLogger(__name__)

PREFIX = "appliance_pool"


class PoolSignalsCollector(Collector):
    def __init__(
        self,
        queue: Queue,
        settings: Settings,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        interval_s: float = 15.0,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.window_s = window_s
        self.interval_s = interval_s
        self.report: PoolReport | None = None
        #: Monotonic time of the last refresh attempt that succeeded, and whether the latest attempt did.
        self.refreshed_at: float | None = None
        self.last_ok = False
        self.errors = 0
        self._inflight: asyncio.Task[PoolReport | None] | None = None
        self._task: asyncio.Task[None] | None = None
        #: Checked by the loop too: a cancel racing redis-py's internal timeouts can be swallowed on Python 3.11.
        self._closed = False

    # --- refreshing -------------------------------------------------------------------------------------------

    async def refresh(self) -> PoolReport | None:
        """Recompute now (joins a refresh already running). On error the previous report stays, marked stale."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._compute(), name="pool-signals-refresh")
        return await asyncio.shield(self._inflight)

    async def _compute(self) -> PoolReport | None:
        try:
            report = await read_pool_signals(self.queue, self.settings, window_s=self.window_s)
        except Exception as exc:  # Redis away: keep serving the last report, flagged by `_up` and `_age`
            self.last_ok = False
            self.errors += 1
            log.warning("pool signals: refresh failed (%s: %s)", type(exc).__name__, exc)
            return self.report
        self.report, self.refreshed_at, self.last_ok = report, time.monotonic(), True
        return report

    async def ensure_fresh(self, max_age_s: float | None = None) -> PoolReport | None:
        """Refresh when the report is older than `max_age_s` (default: the refresh interval)."""
        limit = self.interval_s if max_age_s is None else max_age_s
        if self.refreshed_at is None or time.monotonic() - self.refreshed_at > limit:
            return await self.refresh()
        return self.report

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="pool-signals")

    async def _loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    async def close(self) -> None:
        self._closed = True
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # --- rendering --------------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield from self._refresh_metrics()
        report = self.report
        if report is None or self.refreshed_at is None:
            return
        yield from _report_metrics(report, self.refreshed_at)
        yield from _pool_metrics(report)

    def _refresh_metrics(self) -> Iterator[Metric]:
        """Whether the refreshes succeed: rendered even before the first report."""
        up = GaugeMetricFamily(
            f"{PREFIX}_signals_up", "1 when the latest refresh of the pool signals succeeded."
        )
        up.add_metric([], 1.0 if self.last_ok else 0.0)
        yield up
        errors = CounterMetricFamily(
            f"{PREFIX}_signals_refresh_errors", "Failed refreshes of the pool signals."
        )
        errors.add_metric([], float(self.errors))
        yield errors


def _report_metrics(report: PoolReport, refreshed_at: float) -> Iterator[Metric]:
    """What the report as a whole says: its age, its window, the machines that serve every pool."""
    age = GaugeMetricFamily(f"{PREFIX}_signals_age_seconds", "Seconds since the pool signals were computed.")
    age.add_metric([], max(0.0, time.monotonic() - refreshed_at))
    yield age
    window = GaugeMetricFamily(
        f"{PREFIX}_signals_window_seconds",
        "Look-back of the run-time percentiles, outcome counts and success ratio.",
    )
    window.add_metric([], report.window_s)
    yield window
    shared = GaugeMetricFamily(
        f"{PREFIX}_shared_machines", "Live machines that declare no pool (serve all).", labels=["queue"]
    )
    shared.add_metric([report.queue], float(report.shared_machines))
    yield shared


#: Labels of every per-pool metric.
POOL_LABELS = ["queue", "pool"]


def _pool_gauges() -> dict[str, GaugeMetricFamily]:
    """One gauge per `PoolSignals` attribute that is rendered as it is."""
    labels = POOL_LABELS
    return {
        "waiting": GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Jobs of the pool waiting to be claimed.", labels=labels
        ),
        "active": GaugeMetricFamily(
            f"{PREFIX}_jobs_active", "Jobs of the pool leased by a worker now.", labels=labels
        ),
        "unworkable": GaugeMetricFamily(
            f"{PREFIX}_jobs_unworkable", "Waiting jobs of the pool no live worker can run.", labels=labels
        ),
        "oldest_wait_s": GaugeMetricFamily(
            f"{PREFIX}_oldest_wait_seconds",
            "Age of the pool's oldest waiting job (0 when none waits).",
            labels=labels,
        ),
        "machines": GaugeMetricFamily(
            f"{PREFIX}_machines", "Live machines that declare this pool.", labels=labels
        ),
        "desired_machines": GaugeMetricFamily(
            f"{PREFIX}_desired_machines",
            "Machines the pool should have to drain its backlog within target_drain_s (docs/monitoring.md).",
            labels=labels,
        ),
        "min_machines": GaugeMetricFamily(f"{PREFIX}_min_machines", "Configured lower bound.", labels=labels),
        "target_drain_s": GaugeMetricFamily(
            f"{PREFIX}_target_drain_seconds", "Configured backlog drain target.", labels=labels
        ),
        "success_ratio": GaugeMetricFamily(
            f"{PREFIX}_success_ratio",
            "Completed / (completed + failed for good) over the window; absent without finished jobs.",
            labels=labels,
        ),
    }


def _pool_metrics(report: PoolReport) -> Iterator[Metric]:
    """The per-pool metrics, one sample per pool in each."""
    labels = POOL_LABELS
    fams = _pool_gauges()
    max_machines = GaugeMetricFamily(
        f"{PREFIX}_max_machines", "Configured upper bound (absent: none).", labels=labels
    )
    # One gauge per quantile: a `quantile` label is reserved for summaries, whose counts must be monotonic.
    durations = {
        q: GaugeMetricFamily(
            f"{PREFIX}_job_duration_p{q}_seconds",
            f"{q}th percentile of the run time "
            "(claim to completion) of the pool's jobs completed in the window.",
            labels=labels,
        )
        for q in ("50", "90", "99")
    }
    outcomes = GaugeMetricFamily(
        f"{PREFIX}_window_jobs",
        "Attempts of the pool that ended in the window, by outcome (completed, failed = for good, retried).",
        labels=[*labels, "outcome"],
    )
    for p in report.pools:
        lv = [report.queue, p.pool]
        for attr, fam in fams.items():
            value = getattr(p, attr)
            if attr == "oldest_wait_s" and value is None:
                value = 0.0
            if value is not None:
                fam.add_metric(lv, float(value))
        if p.max_machines is not None:
            max_machines.add_metric(lv, float(p.max_machines))
        for q, value in (("50", p.duration_p50_s), ("90", p.duration_p90_s), ("99", p.duration_p99_s)):
            if value is not None:
                durations[q].add_metric(lv, value)
        for outcome in ("completed", "failed", "retried"):
            outcomes.add_metric([*lv, outcome], float(getattr(p, outcome)))
    yield from fams.values()
    yield from (max_machines, *durations.values(), outcomes)
