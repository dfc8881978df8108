"""End to end: no-op jobs through the product (`appliance worker` processes) and through the peer queues, on the
same private Redis.

    python bench/throughput.py [--quick] [--repeat N] [--json] [--python SYSTEM=PATH ...] [--only NAME,...]
                               [--layouts 2x10,4x8]

For each system and each worker layout (processes x concurrency per process; 1x1, 2x10 and 4x8), N jobs are
enqueued through the system's public API first, then the workers start. Every 20 ms the orchestrator reads how many
jobs are done from the system's own Redis state (for the product: the queue's `completed` count; for a peer: the
jobs still in its queue and in flight, see PENDING), never from the workers' own tallies. Over the window from 10 %
to 90 % of the jobs done (start-up and the tail left out) it reports:
  jobs/s           jobs done in the window / its length
  Redis CPU/job    delta of INFO cpu (used_cpu_sys + used_cpu_user) / jobs done in the window
  worker CPU/job   delta of utime + stime (/proc) of every process in the workers' process groups / jobs
  busy cores       (Redis CPU + worker CPU) over the window / its length: how much of the machine the system used
  idle cores       the machine's idle time (/proc/stat) over the window / its length: what nobody used (on a
                   shared machine, busy + idle < the cores: other processes took the rest)
With --repeat the systems take turns in every round; the cells are medians, and each layout's verdict also
gives the product's rate over the best peer's round by round (median and range of those paired ratios), which the
machine's swings between rounds disturb less than the ratio of medians.

Rows: `appliance` is the product as users run it: `appliance worker --connector echo --index i --concurrency C`,
default settings (events on, EVALSHA, INFO logging to a file), jobs `{}` submitted with `Queue.submit_many`.
`appliance-core` ("queue core, no runtime") is bench/peers/peer_appliance.py, a bare loop around
`Queue.finish_and_claim`: what the queue alone allows, never the headline. The peers run under their own
interpreters (DEFAULT_PYTHONS; --python SYSTEM=PATH overrides one, $BENCH_PEER_PYTHON all); a peer that cannot
be imported is reported as skipped. Each run stops at --timeout seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import ROOT, machine_line, stop_process_groups, table

PEERS_DIR = Path(__file__).resolve().parent / "peers"
PRODUCT = "appliance"
CORE = "appliance-core"
#: The product row again, run from another checkout (--before PATH): a before/after figure from the same run.
BEFORE = "appliance-before"
SYSTEMS = {
    # name: (adapter, module that must import, configuration in words)
    PRODUCT: (
        "peer_appliance_worker",
        "appliance.queue",
        "`appliance worker --connector echo --index i --concurrency C` processes, default settings (events on "
        "the stream and pub/sub, EVALSHA, INFO log to a file); jobs `{}` from Queue.submit_many",
    ),
    CORE: (
        "peer_appliance",
        "appliance.queue",
        "queue core, no runtime: a bare loop around Queue.finish_and_claim per process (no worker runtime)",
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
    "saq": ("peer_saq", "saq", "Worker(concurrency=C), defaults"),
}


def _int(value: Any) -> int:
    return int(value or 0)


#: How many jobs are done, read from each system's own Redis state (`jobs` = how many were enqueued).
DONE: dict[str, Callable[[redis.Redis, int], int]] = {
    PRODUCT: lambda r, jobs: _int(r.hget("appliance:{default}:counts", "completed")),
    BEFORE: lambda r, jobs: _int(r.hget("appliance:{default}:counts", "completed")),
    CORE: lambda r, jobs: _int(r.hget("appliance:{bench}:counts", "completed")),
    # A finished job leaves the queue list and the started ("wip") registry.
    "rq": lambda r, jobs: jobs - r.llen("rq:queue:bench") - r.zcard("rq:wip:bench"),
    # arq removes a job from its queue zset when it finishes.
    "arq": lambda r, jobs: jobs - r.zcard("arq:queue"),
    # kombu: waiting in the list, or delivered and not acked yet (early ack: acked as the task starts).
    "celery": lambda r, jobs: jobs - r.llen("celery") - r.hlen("unacked"),
    # dramatiq keeps a message in `<queue>.msgs` until it is acked.
    "dramatiq": lambda r, jobs: jobs - r.hlen("dramatiq:bench.msgs"),
    "bullmq": lambda r, jobs: (
        jobs - r.llen("bull:bench:wait") - r.llen("bull:bench:active") - r.zcard("bull:bench:prioritized")
    ),
    # saq keeps every unfinished job in its `incomplete` zset.
    "saq": lambda r, jobs: jobs - r.zcard("saq:bench:incomplete"),
}
#: Interpreters per system: arq and bullmq need redis-py < 6 while celery 5.7 (kombu 5.7) needs >= 6.1, so the peers
#: cannot share one environment. Override with --python SYSTEM=PATH or $BENCH_PEER_PYTHON (all peers).
DEFAULT_PYTHONS = {
    "celery": "/work/bench-venv-celery/bin/python",
    "saq": "/work/bench-venv-saq/bin/python",
    "*": "/work/bench-venv/bin/python",
}
LAYOUTS = ((1, 1), (2, 10), (4, 8))
POLL_S = 0.02


@dataclass
class Result:
    system: str
    layout: str
    jobs: int = 0
    done: int = 0
    rate: float = float("nan")
    redis_us: float = float("nan")
    worker_us: float = float("nan")
    busy: float = float("nan")
    idle: float = float("nan")
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def idle_cores_s() -> float:
    """Seconds of idle (and iowait) time of all cores together so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(groups: set[int]) -> float:
    """CPU seconds (user + system, all threads) of every live process in the process groups `groups`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        if int(fields[2]) in groups:
            total += int(fields[11]) + int(fields[12])
    return total / tick


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, logs: Path) -> None:
        self.args = args
        self.url = url
        self.logs = logs
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
        # The product row runs this checkout's code.
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    def python(self, system: str) -> str:
        if system in (PRODUCT, CORE, BEFORE):
            return str(self.args.pythons.get(system) or sys.executable)
        return str(self.args.pythons.get(system) or self.args.pythons.get("*") or sys.executable)

    def available(self, system: str) -> str | None:
        """None when the system's library imports under its interpreter, else why not."""
        probe = subprocess.run(
            [self.python(system), "-c", f"import {SYSTEMS[system][1]}"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1][:120]

    def produce(self, system: str, count: int) -> None:
        adapter = str(PEERS_DIR / f"{SYSTEMS[system][0]}.py")
        out = subprocess.run(
            [self.python(system), adapter, "produce", "bulk", self.url, str(count), "0"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{system} producer failed: {out.stderr.strip()[-800:]}")

    def commands(self, system: str, processes: int, concurrency: int) -> list[list[str]]:
        python = self.python(system)
        if system in (PRODUCT, BEFORE):
            return [
                [python, "-m", "appliance", "worker", "--connector", "echo", "--index", str(i)]
                + ["--concurrency", str(concurrency), "--redis-url", self.url]
                for i in range(processes)
            ]
        if system == "dramatiq":
            return [
                [python, "-m", "dramatiq", "peer_dramatiq", "--processes", str(processes)]
                + ["--threads", str(concurrency), "--path", str(PEERS_DIR)]
            ]
        adapter = str(PEERS_DIR / f"{SYSTEMS[system][0]}.py")
        return [[python, adapter, "worker", self.url, str(concurrency)]] * processes

    def start_workers(self, system: str, processes: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
        env = {**self.env, "BENCH_MODE": "throughput"}
        if system == BEFORE:
            env["PYTHONPATH"] = self.args.before
        workers = []
        for i, command in enumerate(self.commands(system, processes, concurrency)):
            with open(self.logs / f"{system}-{processes}x{concurrency}-{i}.log", "wb") as log:
                workers.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=PEERS_DIR if system not in (PRODUCT, BEFORE) else self.logs,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        return workers

    def redis_cpu_s(self) -> float:
        info = self.redis.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def throughput(self, system: str, processes: int, concurrency: int, jobs: int) -> Result:
        result = Result(system, f"{processes}x{concurrency}", jobs=jobs)
        self.redis.flushall()
        self.produce(system, jobs)
        done_of = DONE[system]
        workers = self.start_workers(system, processes, concurrency)
        groups = {p.pid for p in workers}
        marks: list[
            tuple[float, int, float, float, float]
        ] = []  # (time, done, redis cpu, worker cpu, idle) at 10 % and 90 %
        deadline = time.monotonic() + self.args.timeout
        done = 0
        try:
            while time.monotonic() < deadline and len(marks) < 2:
                done = done_of(self.redis, jobs)
                if done >= jobs * (0.1, 0.9)[len(marks)]:
                    marks.append(
                        (time.monotonic(), done, self.redis_cpu_s(), group_cpu_s(groups), idle_cores_s())
                    )
                    continue
                if any(p.poll() is not None for p in workers):
                    result.note = "a worker exited"
                    break
                time.sleep(POLL_S)
        finally:
            stop_process_groups(workers)
        result.done = done
        if len(marks) == 2:
            (t0, d0, r0, w0, i0), (t1, d1, r1, w1, i1) = marks
            n = d1 - d0
            result.rate = n / (t1 - t0)
            result.redis_us, result.worker_us = (r1 - r0) / n * 1e6, (w1 - w0) / n * 1e6
            result.busy, result.idle = (r1 - r0 + w1 - w0) / (t1 - t0), (i1 - i0) / (t1 - t0)
        else:
            result.note = f"stopped at {self.args.timeout:.0f}s with {done:,}/{jobs:,} done {result.note}"
        return result


def _median(cell: list[Result]) -> Result:
    """The cell's medians over the runs that finished (a run stopped at the cap has no rate)."""
    finished = [r for r in cell if r.rate == r.rate] or cell[:1]
    result = finished[0]
    if len(cell) > 1:
        rates = [r.rate for r in finished]
        result.rate = statistics.median(rates)
        result.redis_us = statistics.median(r.redis_us for r in finished)
        result.worker_us = statistics.median(r.worker_us for r in finished)
        result.busy = statistics.median(r.busy for r in finished)
        result.idle = statistics.median(r.idle for r in finished)
        capped = f", {len(cell) - len(finished)} stopped at the cap" if len(finished) < len(cell) else ""
        result.note = f"median of {len(rates)} ({min(rates):,.0f}–{max(rates):,.0f}){capped}"
    return result


def round_ratios(rounds: dict[tuple[str, str], list[Result]], layout: str, peer: str) -> list[float]:
    """The product's rate over `peer`'s in each round of `layout` (the two ran back to back in it), for the
    rounds both finished: steadier than the ratio of medians while the machine's speed moves between rounds."""
    mine, theirs = rounds.get((PRODUCT, layout), []), rounds.get((peer, layout), [])
    return [
        a.rate / b.rate for a, b in zip(mine, theirs, strict=False) if a.rate == a.rate and b.rate == b.rate
    ]


def measure(
    args: argparse.Namespace, names: list[str]
) -> tuple[list[Result], dict[str, str], dict[tuple[str, str], list[Result]]]:
    from _common import private_redis

    skipped: dict[str, str] = {}
    runs: dict[tuple[str, str], list[Result]] = {}
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-throughput-") as logs:
        bench = Bench(args, server.url, Path(logs))
        available = []
        for name in names:
            why = bench.available(name)
            if why:
                skipped[name] = why
                print(f"  {name}: skipped ({why})", flush=True)
            else:
                available.append(name)
        # With --repeat, the systems take turns (a, b, a, b, ...) so the machine's slow and fast moments fall on
        # all of them alike; each cell reports the medians.
        for _ in range(args.repeat):
            for processes, concurrency in args.layouts:
                jobs = args.jobs_1x1 if processes * concurrency == 1 else args.jobs
                for name in available:
                    t0 = time.monotonic()
                    r = bench.throughput(name, processes, concurrency, jobs)
                    runs.setdefault((name, r.layout), []).append(r)
                    print(
                        f"  {name:14s} {r.layout:5s}: {r.rate:8.0f} jobs/s  Redis {r.redis_us:6.1f} µs/job  "
                        f"workers {r.worker_us:7.1f} µs/job  busy {r.busy:4.2f} idle {r.idle:4.2f} cores  "
                        f"({time.monotonic() - t0:.0f}s) {r.note}",
                        flush=True,
                    )
    rates = {cell: [copy.copy(r) for r in results] for cell, results in runs.items()}
    return [_median(cell) for cell in runs.values()], skipped, rates


def report(
    args: argparse.Namespace,
    results: list[Result],
    skipped: dict[str, str],
    rounds: dict[tuple[str, str], list[Result]],
) -> None:
    print(
        f"\nNo-op jobs, {args.jobs:,} per run ({args.jobs_1x1:,} at 1x1), rates over 10–90 % done; best = best "
        "peer of the layout (not appliance-core):"
    )
    rows = []
    for layout in (f"{p}x{c}" for p, c in args.layouts):
        cell = [r for r in results if r.layout == layout]
        peers = [r for r in cell if r.system not in (PRODUCT, CORE, BEFORE) and r.rate == r.rate]
        best = max(peers, key=lambda r: r.rate) if peers else None
        bull = next((r for r in cell if r.system == "bullmq"), None)
        for r in sorted(cell, key=lambda r: -r.rate if r.rate == r.rate else 0):
            rows.append(
                [
                    r.system if r.system != CORE else "appliance-core (queue core, no runtime)",
                    layout,
                    r.rate,
                    r.rate / best.rate if best else float("nan"),
                    r.redis_us,
                    r.redis_us / bull.redis_us if bull else float("nan"),
                    r.worker_us,
                    r.busy,
                    r.idle,
                    r.note,
                ]
            )
        mine = next((r for r in cell if r.system == PRODUCT), None)
        if mine and best:
            paired = round_ratios(rounds, layout, best.system)
            by_round = (
                f" (by round: median {statistics.median(paired):.2f}x, {min(paired):.2f}–{max(paired):.2f}x"
                f" in {len(paired)})"
                if len(paired) > 1
                else ""
            )
            args.verdicts.append(
                f"target {layout}: appliance worker >= 2x best peer ({best.system} {best.rate:,.0f}/s): "
                f"{mine.rate / best.rate:.2f}x{by_round} -> {'MET' if mine.rate >= 2 * best.rate else 'MISSED'}"
            )
        if mine and bull:
            ratio = mine.redis_us / bull.redis_us
            args.verdicts.append(
                f"target {layout}: Redis CPU/job <= 0.6x BullMQ's ({bull.redis_us:.1f} µs): {ratio:.2f}x -> "
                f"{'MET' if ratio <= 0.6 else 'MISSED'}"
            )
    headers = [
        "system",
        "layout",
        "jobs/s",
        "x best peer",
        "Redis µs/job",
        "x BullMQ",
        "worker µs/job",
        "busy cores",
        "idle cores",
        "note",
    ]
    print(table(headers, rows))
    print()
    for name, (_, _, how) in SYSTEMS.items():
        if name in skipped:
            print(f"  {name}: SKIPPED ({skipped[name]})")
        elif not args.only or name in args.only:
            print(f"  {name}: {how}")
    print("\n".join(args.verdicts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs and shorter bounds")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="SYSTEM=PATH",
        help="interpreter for one system (or *=PATH for all peers); repeatable",
    )
    parser.add_argument("--only", default="", help="comma-separated systems (default: all)")
    parser.add_argument(
        "--layouts",
        default=",".join(f"{p}x{c}" for p, c in LAYOUTS),
        help="comma-separated processes x concurrency (default: 1x1,2x10,4x8)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell, systems taking turns; medians")
    parser.add_argument("--jobs", type=int, default=0, help="jobs per run (default 20,000; quick 4,000)")
    parser.add_argument("--json", action="store_true", help="also print the raw results as one JSON line")
    parser.add_argument(
        "--before",
        metavar="PATH",
        help="also run `appliance worker` from the checkout PATH (row appliance-before)",
    )
    args = parser.parse_args()
    try:
        args.layouts = [tuple(int(n) for n in item.split("x", 1)) for item in args.layouts.split(",") if item]
        if not args.layouts or any(len(lay) != 2 or min(lay) < 1 for lay in args.layouts):
            raise ValueError
    except ValueError:
        parser.error(f"--layouts {args.layouts!r}: expected layouts like 1x1,2x10,4x8")
    if args.before:
        SYSTEMS[BEFORE] = (
            SYSTEMS[PRODUCT][0],
            "appliance.queue",
            f"the product row, code from {args.before}",
        )
    args.pythons = {k: v for k, v in DEFAULT_PYTHONS.items() if Path(v).exists()}
    if os.environ.get("BENCH_PEER_PYTHON"):
        args.pythons = {"*": os.environ["BENCH_PEER_PYTHON"]}
    for item in args.python:
        system, _, path = item.partition("=")
        args.pythons[system] = path
    args.only = [n for n in args.only.split(",") if n]
    args.jobs = args.jobs or (4_000 if args.quick else 20_000)
    args.jobs_1x1 = max(500, args.jobs // 5)
    args.timeout = 15.0 if args.quick else 60.0
    args.verdicts = []
    names = [n for n in SYSTEMS if not args.only or n in args.only or n == BEFORE]
    print(f"# throughput ({'quick' if args.quick else 'full'}) on {machine_line()}")
    print("  interpreters: " + ", ".join(f"{k}={v}" for k, v in args.pythons.items()))
    started = time.monotonic()
    results, skipped, rounds = measure(args, names)
    report(args, results, skipped, rounds)
    print(f"total time {time.monotonic() - started:.0f}s")
    if args.json:
        print(json.dumps([r.__dict__ for r in results]))


if __name__ == "__main__":
    main()
