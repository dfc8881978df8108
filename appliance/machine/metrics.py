"""Prometheus metrics of one machine, on a registry of its own (never the process-global one).

Two sources:
- `MachineCollector` reads the supervisor's `MachineState` (services, GPUs, RAM, queue counters) and /proc (load,
  disk and network I/O) at scrape time, so a scrape never waits on systemd or NVML.
- `JobMetrics` holds histograms and counters fed from the queue's lifecycle event stream by the supervisor,
  counting only jobs run by this machine's workers (so summing over machines does not double count).

Names follow Prometheus conventions: prefix `appliance_`, base units in the name (`_seconds`, `_bytes`,
`_celsius`, `_watts`, `_ratio`), counters end in `_total`. docs/metrics.md lists them all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.machine import resources
from appliance.machine.state import MachineState
from appliance.queue.events import AttemptEnd, EventKind, JobEvent

log = logging.getLogger(__name__)

PREFIX = "appliance"

#: Job run times span API calls (a second) to video renders (an hour).
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
#: Queue waits: from "claimed at once" to "waited for a machine to boot".
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600, float("inf"))


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels or [])


class MachineCollector(Collector):
    """Machine, service, GPU and system metrics. `collect` must not raise (a scrape would fail whole)."""

    def __init__(
        self, state: MachineState, proc: str | Path = "/proc", sys_block: str | Path = "/sys/block"
    ) -> None:
        self.state = state
        self.proc = Path(proc)
        self.sys_block = Path(sys_block)

    def collect(self) -> Iterator[Metric]:
        for part in (self._machine, self._services, self._workers, self._gpus, self._host, self._queue):
            try:
                yield from part()
            except Exception:  # one broken source must not take the other metrics down
                log.exception("metrics: %s failed", part.__name__)

    def _machine(self) -> Iterator[Metric]:
        s = self.state
        info = InfoMetricFamily(f"{PREFIX}_machine", "The machine this exporter describes.")
        info.add_metric(
            [], {"machine_id": s.machine_id, "machine_type": s.machine_type, "supervision": s.supervision}
        )
        yield info
        for name, doc, value in (
            ("machine_ready", "1 once the startup sequence completed and until shutdown.", s.ready()),
            ("machine_healthy", "1 while every check and service is healthy.", s.healthy()),
            (
                "machine_redis_up",
                "1 while Redis answers the supervisor (0: degraded, services ride it out).",
                s.redis_ok,
            ),
            ("machine_draining", "1 while the machine is drained (workers take no new jobs).", s.draining),
            ("machine_uptime_seconds", "Seconds since the supervisor started.", s.uptime_s()),
        ):
            g = _gauge(name, doc)
            g.add_metric([], float(value))
            yield g

    def _services(self) -> Iterator[Metric]:
        labels = ["service", "unit", "kind"]
        up = _gauge(
            "service_up", "1 when the service's unit is active (unmanaged services count as up).", labels
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_service_restarts",
            "Automatic restarts of the unit by systemd (NRestarts).",
            labels=labels,
        )
        memory = _gauge("service_memory_bytes", "Memory of the unit's control group (MemoryCurrent).", labels)
        cpu = CounterMetricFamily(
            f"{PREFIX}_service_cpu_seconds",
            "CPU time used by the unit's control group (CPUUsageNSec).",
            labels=labels,
        )
        uptime = _gauge("service_uptime_seconds", "Seconds since the unit's main process started.", labels)
        stops = CounterMetricFamily(
            f"{PREFIX}_service_stops",
            "Stops of the unit by systemd result (success, "
            "exit-code, signal, watchdog, ...), counted by ExecStopPost=.",
            labels=[*labels, "result"],
        )
        kills = CounterMetricFamily(
            f"{PREFIX}_service_watchdog_kills",
            "Times systemd's watchdog killed the unit (it stopped sending WATCHDOG=1).",
            labels=labels,
        )
        health = self.state.service_health()
        for svc in self.state.plan.services:
            lv = [svc.name, svc.unit, svc.kind]
            up.add_metric(lv, 1.0 if health.get(svc.name) else 0.0)
            counted = self.state.unit_stops.get(svc.unit, {})
            for result, count in sorted(counted.items()):
                stops.add_metric([*lv, result], float(count))
            kills.add_metric(lv, float(counted.get("watchdog", 0)))
            st = self.state.units.get(svc.unit)
            if st is None or not st.managed:
                continue
            restarts.add_metric(lv, float(st.restarts))
            if st.memory_bytes is not None:
                memory.add_metric(lv, float(st.memory_bytes))
            if st.cpu_seconds is not None:
                cpu.add_metric(lv, st.cpu_seconds)
            if (u := st.uptime_s()) is not None:
                uptime.add_metric(lv, u)
        yield from (up, restarts, memory, cpu, uptime, stops, kills)

    def _workers(self) -> Iterator[Metric]:
        busy = _gauge(
            "jobs_in_flight", "Jobs this machine's workers are running now.", ["worker", "connector"]
        )
        for svc in self.state.plan.workers:
            wid = svc.worker_id(self.state.machine_id) or ""
            reported = self.state.workers.get(wid) or {}
            busy.add_metric([wid, svc.connector or ""], float(_current_job_count(reported)))
        yield busy

    def _gpus(self) -> Iterator[Metric]:
        res = self.state.resources
        available = _gauge("gpu_available", "1 when NVML answers and reports at least one GPU.")
        available.add_metric([], 1.0 if res and res.nvml_available and res.gpus else 0.0)
        yield available
        if not res or not res.gpus:
            return
        info = InfoMetricFamily(f"{PREFIX}_gpu", "GPU identity as NVML reports it.", labels=["gpu"])
        fams = {
            "utilization_ratio": _gauge(
                "gpu_utilization_ratio", "Share of the last sample period the GPU was busy.", ["gpu"]
            ),
            "memory_utilization_ratio": _gauge(
                "gpu_memory_utilization_ratio",
                "Share of the last sample period GPU memory was read or written.",
                ["gpu"],
            ),
            "memory_used_bytes": _gauge("gpu_memory_used_bytes", "GPU memory in use.", ["gpu"]),
            "memory_total_bytes": _gauge("gpu_memory_total_bytes", "GPU memory installed.", ["gpu"]),
            "temperature_celsius": _gauge("gpu_temperature_celsius", "GPU core temperature.", ["gpu"]),
            "power_watts": _gauge("gpu_power_watts", "GPU board power draw.", ["gpu"]),
        }
        for g in res.gpus:
            idx = str(g.index)
            info.add_metric([idx], {"name": g.name, "uuid": g.uuid})
            for attr, fam in fams.items():
                value = getattr(g, attr)
                if value is not None:  # NVMLError_NotSupported on this GPU: leave the series out
                    fam.add_metric([idx], float(value))
        yield info
        yield from fams.values()

    def _host(self) -> Iterator[Metric]:
        res = self.state.resources
        if res is not None:
            for name, doc, value in (
                ("cpu_cores", "CPUs this machine's processes may use.", res.cpu_cores),
                ("memory_total_bytes", "Installed RAM.", res.ram_total_bytes),
                (
                    "memory_available_bytes",
                    "RAM available for new work (MemAvailable).",
                    res.ram_available_bytes,
                ),
            ):
                g = _gauge(name, doc)
                g.add_metric([], float(value))
                yield g
            for name, doc, value in (
                (
                    "disk_total_bytes",
                    "Size of the file system holding the data directory.",
                    res.disk_total_bytes,
                ),
                ("disk_free_bytes", "Free space on that file system.", res.disk_free_bytes),
            ):
                g = _gauge(name, doc, ["path"])
                g.add_metric([res.disk_path], float(value))
                yield g
        load = resources.read_loadavg(self.proc / "loadavg")
        for minutes, avg in zip((1, 5, 15), load, strict=True):
            g = _gauge(f"load{minutes}", f"{minutes}-minute load average.")
            g.add_metric([], avg)
            yield g
        disk_r = CounterMetricFamily(
            f"{PREFIX}_disk_read_bytes", "Bytes read from the disk since boot.", labels=["device"]
        )
        disk_w = CounterMetricFamily(
            f"{PREFIX}_disk_written_bytes", "Bytes written to the disk since boot.", labels=["device"]
        )
        for dev, (r, w) in sorted(resources.read_diskstats(self.proc / "diskstats", self.sys_block).items()):
            disk_r.add_metric([dev], float(r))
            disk_w.add_metric([dev], float(w))
        net_rx = CounterMetricFamily(
            f"{PREFIX}_network_receive_bytes", "Bytes received since boot.", labels=["interface"]
        )
        net_tx = CounterMetricFamily(
            f"{PREFIX}_network_transmit_bytes", "Bytes transmitted since boot.", labels=["interface"]
        )
        for iface, (rx, tx) in sorted(resources.read_netdev(self.proc / "net" / "dev").items()):
            net_rx.add_metric([iface], float(rx))
            net_tx.add_metric([iface], float(tx))
        yield from (disk_r, disk_w, net_rx, net_tx)

    def _queue(self) -> Iterator[Metric]:
        stats = self.state.queue_stats
        if not stats:
            return
        yield from queue_families(stats)


def _current_job_count(reported: Mapping[str, Any]) -> int:
    jobs = reported.get("jobs") or reported.get("current_jobs")
    if isinstance(jobs, list | dict):
        return len(jobs)
    return 1 if reported.get("current_job_id") else 0


def queue_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """Queue depth and totals from the queue's own counters (`Queue.stats()`): the queue never scans for them."""
    queue = str(stats.get("queue", "default"))
    labels = ["queue", "shape", "service", "pool"]
    depth = _gauge("queue_depth", "Jobs waiting to be claimed, by requirement shape.", labels)
    oldest = _gauge("queue_oldest_wait_seconds", "Age of the oldest waiting job of the shape.", labels)
    for entry in stats.get("shapes") or []:
        if not isinstance(entry, Mapping):
            continue
        req = entry.get("requirements") or {}
        lv = [queue, str(entry.get("shape", "")), str(req.get("service") or ""), str(req.get("pool") or "")]
        depth.add_metric(lv, float(entry.get("waiting", 0)))
        if entry.get("oldest_wait_s") is not None:
            oldest.add_metric(lv, float(entry["oldest_wait_s"]))
    yield depth
    yield oldest
    jobs = _gauge("queue_jobs", "Jobs of the queue by state.", ["queue", "state"])
    # limited: waiting jobs a customer's limit holds out of line (not in waiting, not unworkable).
    for state in ("waiting", "delayed", "active", "dead", "unworkable", "limited"):
        if isinstance(stats.get(state), int | float):
            jobs.add_metric([queue, state], float(stats[state]))
    yield jobs
    workers = _gauge("queue_workers", "Live workers registered with the queue.", ["queue"])
    if isinstance(stats.get("workers"), int | float):
        workers.add_metric([queue], float(stats["workers"]))
    yield workers
    totals = CounterMetricFamily(
        f"{PREFIX}_queue_transitions",
        "Job transitions counted by the queue since it was created (submitted, completed, failed, ...).",
        labels=["queue", "event"],
    )
    for event, count in sorted((stats.get("totals") or {}).items()):
        totals.add_metric([queue, str(event)], float(count))
    yield totals


class JobMetrics:
    """Per-service job histograms and counters of this machine's workers, fed with queue lifecycle events."""

    def __init__(self, registry: CollectorRegistry, machine_id: str) -> None:
        self.machine_id = machine_id
        self.duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Run time of a job attempt, from claim to completion or failure.",
            ["service", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_job_queue_wait_seconds",
            "Time a job waited from submission (or its retry becoming due) to its claim.",
            ["service"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.completed = Counter(
            f"{PREFIX}_jobs_completed",
            "Jobs completed by this machine's workers.",
            ["service"],
            registry=registry,
        )
        self.failed = Counter(
            f"{PREFIX}_jobs_failed",
            "Job attempts that failed on this machine's workers.",
            ["service", "retryable"],
            registry=registry,
        )
        self.retried = Counter(
            f"{PREFIX}_jobs_retried",
            "Failed attempts on this machine that went back to the queue for another try.",
            ["service"],
            registry=registry,
        )
        self.released = Counter(
            f"{PREFIX}_jobs_released",
            "Jobs this machine's workers handed back unfinished (drain, shutdown, lost service).",
            ["service"],
            registry=registry,
        )

        #: job id -> ms of its claim by one of our workers, to time attempts that end without a duration field.
        self._claimed_ms: dict[str, int] = {}
        #: Worker ids that belong to this machine; the supervisor keeps it current (plan + registry).
        self.worker_ids: set[str] = set()

    def observe(self, entry_id: str, fields: Mapping[str, str]) -> None:
        """Account one event of the queue's event stream (`appliance:{<queue>}:events`), as EventLog reads it (a
        round trip's claims, or completions, share an entry: EventLog hands on each event, with its own fields).

        Events carry `event` (claimed, completed, retrying, failed, dead, released, lease_expired, ...), `job`,
        `worker`, `service`, and `wait_ms` (claimed) or `duration_ms` (completed); the entry id is its time (ms).
        """
        worker = fields.get("worker")
        if worker not in self.worker_ids:
            return
        event = JobEvent.of_entry(entry_id, fields)
        job, service, at_ms, meaning = event.job, event.service or "unknown", event.at_ms, event.meaning
        if event.kind is EventKind.CLAIMED:
            if (wait := event.number("wait_ms")) is not None:
                self.queue_wait.labels(service).observe(max(0.0, wait / 1000))
            if len(self._claimed_ms) > 100_000:  # claims whose end we never saw (stream trimmed): forget them
                self._claimed_ms.clear()
            self._claimed_ms[job] = at_ms
            return
        claimed = self._claimed_ms.pop(job, None)
        ends = meaning.ends if meaning is not None else None
        if ends is AttemptEnd.COMPLETED:
            self.completed.labels(service).inc()
            duration = event.number("duration_ms")
            if duration is None and claimed is not None:
                duration = at_ms - claimed
            if duration is not None:
                self.duration.labels(service, "completed").observe(max(0.0, duration / 1000))
        elif ends in (AttemptEnd.RETRIED, AttemptEnd.FAILED):
            self.failed.labels(service, "true" if ends is AttemptEnd.RETRIED else "false").inc()
            if ends is AttemptEnd.RETRIED:
                self.retried.labels(service).inc()
            if claimed is not None:
                self.duration.labels(service, "failed").observe(max(0.0, (at_ms - claimed) / 1000))
        elif ends is AttemptEnd.RETURNED:
            self.released.labels(service).inc()


def make_registry(state: MachineState, proc: str | Path = "/proc") -> tuple[CollectorRegistry, JobMetrics]:
    """A fresh registry with the machine collector and the job metrics registered."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MachineCollector(state, proc=proc))
    jobs = JobMetrics(registry, state.machine_id)
    jobs.worker_ids = set(state.plan.worker_ids())
    return registry, jobs
