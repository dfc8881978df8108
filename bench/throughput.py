"""End to end: no-op jobs through appliance.queue and through the peer queues, on the same private Redis.

    python bench/throughput.py [--quick] [--python SYSTEM=PATH ...] [--only NAME,...]

For each system (adapters in bench/peers/) and each worker layout (processes x concurrency per process):
  throughput  N jobs enqueued first, then the workers start; rate = jobs started / (last start - first start),
              from per-process tallies (the no-op job makes no Redis call of its own).
  latency     (the 4x8 layout) workers running; jobs submitted at a steady rate well below capacity:
              submit -> job start p50/p99 (same machine clock). Then idle wake-up: one job at a time into idle
              workers, waiting for each to start.

The peers run under their own interpreters (see DEFAULT_PYTHONS: arq and bullmq pin redis-py < 6, celery 5.7 needs
>= 6.1); --python SYSTEM=PATH overrides one, $BENCH_PEER_PYTHON all. A peer that cannot be imported there
is reported as skipped. Bounded: each throughput run stops at --timeout seconds (the rate is then taken over the
jobs that ran).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import machine_line, percentile, private_redis, table

PEERS_DIR = Path(__file__).resolve().parent / "peers"
SYSTEMS = {
    # name: (adapter, module that must import, configuration in words)
    "appliance": (
        "peer_appliance",
        "appliance.queue",
        "one worker per process with C slots: Queue.finish_and_claim (complete + claim in one round trip), FCALL",
    ),
    "rq": ("peer_rq", "rq", "SimpleWorker (no fork), result_ttl=0; 1 job at a time per process"),
    "arq": ("peer_arq", "arq", "defaults (poll 0.5 s), max_jobs=C, keep_result=0"),
    "celery": (
        "peer_celery",
        "celery",
        "Redis broker, --pool=threads -c C (solo for 1x1), ignore_result, no gossip/mingle/heartbeat",
    ),
    "dramatiq": (
        "peer_dramatiq",
        "dramatiq",
        "Redis broker, dramatiq CLI --processes P --threads C, default middleware",
    ),
    "bullmq": ("peer_bullmq", "bullmq", "Python bullmq Worker(concurrency=C), removeOnComplete"),
}
#: Interpreters per system: arq and bullmq need redis-py < 6 while celery 5.7 (kombu 5.7) needs >= 6.1, so the peers
#: cannot share one environment. Override with --python SYSTEM=PATH or $BENCH_PEER_PYTHON (all peers).
DEFAULT_PYTHONS = {"celery": "/work/bench-venv-celery/bin/python", "*": "/work/bench-venv/bin/python"}


@dataclass
class Result:
    system: str
    layout: str
    jobs: int = 0
    done: int = 0
    rate: float = float("nan")
    paced_p50: float = float("nan")
    paced_p99: float = float("nan")
    idle_p50: float = float("nan")
    idle_p99: float = float("nan")
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}

    def python(self, system: str) -> str:
        if system == "appliance":
            return str(self.args.pythons.get("appliance") or sys.executable)
        return str(self.args.pythons.get(system) or self.args.pythons.get("*") or sys.executable)

    def available(self, system: str) -> str | None:
        """None when the system's library imports under its interpreter, else why not."""
        module = SYSTEMS[system][1]
        probe = subprocess.run(
            [self.python(system), "-c", f"import {module}"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1][:120]

    def adapter(self, system: str) -> str:
        return str(PEERS_DIR / f"{SYSTEMS[system][0]}.py")

    def produce(
        self, system: str, role: str, count: int, rate: float = 0.0, timeout: float = 120
    ) -> dict[str, Any]:
        out = subprocess.run(
            [self.python(system), self.adapter(system), "produce", role, self.url, str(count), str(rate)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{system} producer ({role}) failed: {out.stderr.strip()[-800:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start_workers(
        self, system: str, processes: int, concurrency: int, mode: str
    ) -> list[subprocess.Popen[bytes]]:
        env = {**self.env, "BENCH_MODE": mode}
        python = self.python(system)
        if system == "dramatiq":
            commands = [
                [
                    python,
                    "-m",
                    "dramatiq",
                    "peer_dramatiq",
                    "--processes",
                    str(processes),
                    "--threads",
                    str(concurrency),
                    "--path",
                    str(PEERS_DIR),
                ]
            ]
        else:
            commands = [[python, self.adapter(system), "worker", self.url, str(concurrency)]] * processes
        return [
            subprocess.Popen(
                command,
                env=env,
                cwd=PEERS_DIR,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            for command in commands
        ]

    @staticmethod
    def stop(workers: list[subprocess.Popen[bytes]]) -> str:
        """Stop every process group we started (SIGTERM, then SIGKILL); returns the tail of any stderr."""
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in workers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with_errors = []
        for proc in workers:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if "Traceback" in err or "Error" in err:
                with_errors.append(err.strip()[-400:])
        for proc in workers:  # a dramatiq/celery child left in the group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return with_errors[0] if with_errors else ""

    def progress(self) -> tuple[int, float, float]:
        count, first, last = 0, float("inf"), 0.0
        for value in self.redis.hgetall("bench:progress").values():
            n, f, la = value.split()
            if int(n):
                count, first, last = count + int(n), min(first, float(f)), max(last, float(la))
        return count, first, last

    def throughput(self, system: str, processes: int, concurrency: int, jobs: int) -> Result:
        result = Result(system, f"{processes}x{concurrency}", jobs=jobs)
        self.redis.flushall()
        self.produce(system, "bulk", jobs, timeout=300)
        workers = self.start_workers(system, processes, concurrency, "throughput")
        deadline = time.monotonic() + self.args.timeout
        try:
            while time.monotonic() < deadline:
                if self.progress()[0] >= jobs or any(p.poll() is not None for p in workers):
                    break
                time.sleep(0.1)
            time.sleep(0.15)  # the reporters' last write
            done, first, last = self.progress()
        finally:
            error = self.stop(workers)
        result.done = done
        if done > 1 and last > first:
            result.rate = (done - 1) / (last - first)
        if done < jobs:
            result.note = f"stopped at {self.args.timeout:.0f}s with {done:,}/{jobs:,} done"
        if error and done < jobs:
            result.note += f" worker error: {error.splitlines()[-1]}"
        return result

    def latency(self, system: str, processes: int, concurrency: int, result: Result) -> None:
        self.redis.flushall()
        workers = self.start_workers(system, processes, concurrency, "latency")
        try:
            paced = self.produce(system, "paced", self.args.paced, rate=self.args.rate)["latencies_ms"]
            idle = self.produce(system, "idle", self.args.idle)["latencies_ms"]
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result.note += f" latency run failed: {str(exc)[-200:]}"
            return
        finally:
            self.stop(workers)
        result.paced_p50, result.paced_p99 = percentile(paced, 50), percentile(paced, 99)
        result.idle_p50, result.idle_p99 = percentile(idle, 50), percentile(idle, 99)
        result.extra["paced_n"], result.extra["idle_n"] = len(paced), len(idle)


def run(args: argparse.Namespace) -> None:
    layouts = [(4, 8, args.jobs), (1, 1, args.jobs_1x1)]
    names = [n for n in SYSTEMS if not args.only or n in args.only.split(",")]
    print(f"# throughput ({'quick' if args.quick else 'full'}) on {machine_line()}")
    print("  interpreters: " + ", ".join(f"{k}={v}" for k, v in args.pythons.items()))
    results: list[Result] = []
    skipped: dict[str, str] = {}
    started = time.monotonic()
    with private_redis() as server:
        bench = Bench(args, server.url)
        available = []
        for name in names:
            why = bench.available(name)
            if why:
                skipped[name] = why
                print(f"  {name}: skipped ({why})", flush=True)
            else:
                available.append(name)
        # With --repeat, the systems take turns (a, b, a, b, ...) so the machine's slow and fast moments fall on
        # all of them alike; each cell reports the median rate.
        runs: dict[tuple[str, str], list[Result]] = {}
        for round_ in range(args.repeat):
            for name in available:
                for processes, concurrency, jobs in layouts:
                    t0 = time.monotonic()
                    result = bench.throughput(name, processes, concurrency, jobs)
                    if round_ == 0 and (processes, concurrency) == layouts[0][:2]:
                        bench.latency(name, processes, concurrency, result)
                    runs.setdefault((name, result.layout), []).append(result)
                    print(
                        f"  {name:9s} {result.layout}: {result.rate:8.0f} jobs/s  paced p50/p99 "
                        f"{result.paced_p50:.1f}/{result.paced_p99:.1f} ms  idle p50/p99 {result.idle_p50:.1f}/"
                        f"{result.idle_p99:.1f} ms  ({time.monotonic() - t0:.0f}s) {result.note}",
                        flush=True,
                    )
        for cell in runs.values():
            result = cell[0]
            if len(cell) > 1:
                rates = [r.rate for r in cell]
                result.rate = statistics.median(rates)
                result.note = (
                    f"median of {len(rates)} ({min(rates):,.0f}–{max(rates):,.0f}) {result.note}".strip()
                )
            results.append(result)
    ours = {r.layout: r for r in results if r.system == "appliance"}
    print()
    print(
        f"Throughput (no-op jobs, {args.jobs:,} jobs for 4x8, {args.jobs_1x1:,} for 1x1) and latency (4x8 only: "
        f"{args.paced} jobs at {args.rate:.0f}/s; idle: {args.idle} jobs one at a time), ratio = appliance / system:"
    )
    rows = []
    for r in results:
        mine = ours.get(r.layout)
        ratio = mine.rate / r.rate if mine and r.rate == r.rate and r.rate else float("nan")
        rows.append(
            [
                r.system,
                r.layout,
                r.rate,
                ratio,
                r.paced_p50,
                r.paced_p99,
                r.idle_p50,
                r.idle_p99,
                r.note or "",
            ]
        )
    print(
        table(
            [
                "system",
                "procs x conc",
                "jobs/s",
                "appliance x",
                "p50 ms",
                "p99 ms",
                "idle p50 ms",
                "idle p99 ms",
                "note",
            ],
            rows,
        )
    )
    print()
    for name in names:
        if name not in skipped:
            print(f"  {name}: {SYSTEMS[name][2]}")
    for name, why in skipped.items():
        print(f"  {name}: SKIPPED ({why})")
    for layout, mine in ours.items():
        peers = [r for r in results if r.layout == layout and r.system != "appliance" and r.rate == r.rate]
        if peers:
            best = max(peers, key=lambda r: r.rate)
            verdict = "MET" if mine.rate >= 2 * best.rate else "MISSED"
            print(
                f"target {layout}: appliance >= 2x best peer ({best.system} {best.rate:.0f}/s): "
                f"{mine.rate / best.rate:.2f}x -> {verdict}"
            )
    mine = ours.get("4x8")
    if mine:
        print(
            f"target idle wake-up p99 <= 20 ms: {mine.idle_p99:.1f} ms -> "
            f"{'MET' if mine.idle_p99 <= 20 else 'MISSED'}"
        )
    print(f"total time {time.monotonic() - started:.0f}s")
    if args.json:
        print(json.dumps([r.__dict__ for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer jobs and shorter bounds (under 2 minutes)"
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="SYSTEM=PATH",
        help="interpreter for one peer (or *=PATH for all); repeatable",
    )
    parser.add_argument("--only", default="", help="comma-separated systems (default: all)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="throughput runs per cell, systems taking turns; reports the median",
    )
    parser.add_argument("--json", action="store_true", help="also print the raw results as one JSON line")
    args = parser.parse_args()
    args.pythons = {k: v for k, v in DEFAULT_PYTHONS.items() if Path(v).exists()}
    if os.environ.get("BENCH_PEER_PYTHON"):
        args.pythons = {"*": os.environ["BENCH_PEER_PYTHON"]}
    for item in args.python:
        system, _, path = item.partition("=")
        args.pythons[system] = path
    quick = args.quick
    args.jobs = 2_000 if quick else 20_000
    args.jobs_1x1 = 500 if quick else 3_000
    args.timeout = 8.0 if quick else 40.0
    args.paced = 100 if quick else 400
    args.rate = 200.0
    args.idle = 20 if quick else 60
    run(args)


if __name__ == "__main__":
    main()
