"""Chaos: how long a dead machine's jobs take to come back, and that none is lost or done twice.

    python bench/recovery.py [--quick] [--profile NAME=LEASE_MS/HEARTBEAT_MS ...]

Drives the real entry points: each "machine" is a set of real `python -m appliance worker --slot echoN`
processes sharing one machine id, in one process group, against a private redis-server. Jobs are echo jobs that
run a few seconds. Each round picks a machine whose workers hold jobs, waits a random part of a heartbeat
interval (so the kill falls anywhere in the heartbeat cycle), SIGKILLs every process of that machine at once,
then watches the jobs it held: the recovery time of a job is from the kill until another worker holds it (or it
finished). The killed machine is started again (new processes, same ids) before the next round.

No supervisor runs: on a dead machine it dies with its workers, so it cannot hand their jobs back; what brings
them back is the lease expiring and the reaper that every live worker offers to run. At the end every job must
have completed exactly once: `lost` counts jobs that never completed, `doubled` jobs with more than one
`completed` event (the stream keeps every event of the run).

Two times per killed job: `back` (kill -> the job is no longer leased to the dead machine: the reaper put it
back in line) and `re-claimed` (kill -> another worker holds it or it finished). The feeder keeps the fleet
below its capacity less two machines' worth of slots, so the survivors have room and re-claim follows
back-in-line at once, as with a fleet that has headroom.

Before the kills, per profile, Redis load with nothing but the fleet talking to Redis (the bench only reads
INFO commandstats at both ends of each window): commands per second per worker while idle, and while every
worker runs jobs, plus commands per completed job over the busy window. A faster recovery that costs more Redis
work shows here.

Each profile (lease/heartbeat pair) runs the same rounds on a fresh Redis, in the same run; the default pair is
the current QueueSettings defaults. Prints Markdown tables for docs/performance.md; asserts nothing on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ROOT, machine_line, percentile, private_redis, table

from appliance.queue import JobStatus, Queue, QueueSettings

#: How long one echo job runs (s): long enough that every killed machine holds jobs, short enough to drain.
JOB_S = 6.0


@dataclass
class Machine:
    name: str
    workers: int
    concurrency: int
    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    starts: int = 0

    @property
    def worker_ids(self) -> list[str]:
        return [f"{self.name}-echo{i}" for i in range(self.workers)]

    def start(self) -> None:
        """Every worker of the machine in one new process group (the group id is the first worker's pid)."""
        self.starts += 1
        self.procs = []
        group = 0
        for i in range(self.workers):
            log = (self.log_dir / f"{self.name}-echo{i}.{self.starts}.log").open("wb")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "appliance",
                    "worker",
                    "--slot",
                    f"echo{i}",
                    "--concurrency",
                    str(self.concurrency),
                ],
                env={**self.env, "APPLIANCE_MACHINE__ID": self.name},
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=group,
            )
            log.close()
            group = group or proc.pid
            self.procs.append(proc)

    def kill(self) -> None:
        """SIGKILL every process of the machine at once (the whole process group)."""
        os.killpg(self.procs[0].pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Result:
    profile: str
    lease_ms: int
    heartbeat_ms: int
    recoveries: list[float] = field(default_factory=list)
    jobs: int = 0
    lost: int = 0
    doubled: int = 0
    reexecuted: int = 0
    back: list[float] = field(default_factory=list)
    idle_calls_per_worker_s: float = 0.0
    busy_calls_per_worker_s: float = 0.0
    calls_per_job: float = 0.0


async def held_by(queue: Queue, machine: Machine) -> dict[str, str]:
    """Job id -> worker for every lease a worker of `machine` holds now."""
    prefix = f"{machine.name}-"
    found = {}
    async for job_id, owner in queue.client.hscan_iter(queue.keys.owner, count=500):
        worker = owner.split("|")[1]
        if worker.startswith(prefix):
            found[job_id] = worker
    return found


FINISHED = ("completed", "failed", "dead", "cancelled")


async def calls_by_command(queue: Queue) -> dict[str, int]:
    """Calls per command the server ran so far (every client; INFO itself counts one)."""
    stats = await queue.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def total_calls(queue: Queue) -> int:
    return sum((await calls_by_command(queue)).values())


def top_commands(before: dict[str, int], after: dict[str, int], seconds: float, workers: int) -> str:
    """The busiest commands of a window, per second per worker."""
    delta = {name: after[name] - before.get(name, 0) for name in after}
    ranked = sorted(((n, d) for n, d in delta.items() if d > 0), key=lambda x: -x[1])[:6]
    return ", ".join(f"{name} {d / seconds / workers:.2f}" for name, d in ranked)


async def measure_load(
    queue: Queue, workers: int, capacity: int, window_s: float, job_s: float
) -> tuple[float, ...]:
    """(idle calls/s per worker, busy calls/s per worker, calls per completed job) in quiet windows."""
    # Every worker has started and heartbeated, then a moment for its first claims and status to settle.
    while await queue.client.zcard(queue.keys.workers_seen) < workers:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    before_by = await calls_by_command(queue)
    await asyncio.sleep(window_s)
    after_by = await calls_by_command(queue)
    idle = (sum(after_by.values()) - sum(before_by.values())) / window_s / workers
    print(
        f"  idle, per worker per second: {top_commands(before_by, after_by, window_s, workers)}", flush=True
    )
    # Enough jobs that every slot stays busy through the window; completions are counted from the totals.
    count = int(capacity * (window_s / job_s + 2))
    await queue.submit_many({"service": "echo", "payload": {"delay": job_s}} for _ in range(count))
    await asyncio.sleep(1)
    done0 = int((await queue.client.hget(queue.keys.counts, "completed")) or 0)
    before_by = await calls_by_command(queue)
    await asyncio.sleep(window_s)
    after_by = await calls_by_command(queue)
    calls = sum(after_by.values()) - sum(before_by.values())
    print(
        f"  busy, per worker per second: {top_commands(before_by, after_by, window_s, workers)}", flush=True
    )
    done = int((await queue.client.hget(queue.keys.counts, "completed")) or 0) - done0
    busy = calls / window_s / workers
    # Drain the rest before the chaos rounds.
    while int(await queue.client.hget(queue.keys.counts, "completed") or 0) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    return idle, busy, calls / max(1, done)


async def run_profile(args: argparse.Namespace, name: str, lease_ms: int, heartbeat_ms: int) -> Result:
    result = Result(name, lease_ms, heartbeat_ms)
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="recovery-") as tmp:
        url = server.url
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("APPLIANCE_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY"))
        }
        env.update(
            {
                "APPLIANCE_REDIS_URL": url,
                "APPLIANCE_QUEUE__LEASE_MS": str(lease_ms),
                "APPLIANCE_QUEUE__HEARTBEAT_INTERVAL_MS": str(heartbeat_ms),
                "APPLIANCE_STORAGE__LOCAL_DIR": str(Path(tmp) / "outputs"),
                "APPLIANCE_HEALTH__PORT": "0",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
                "PYTHONUNBUFFERED": "1",
            }
        )
        settings = QueueSettings(lease_ms=lease_ms, heartbeat_interval_ms=heartbeat_ms)
        queue = await Queue.connect(url, settings=settings)
        machines = [
            Machine(f"m{i}", args.workers, args.concurrency, env, Path(tmp)) for i in range(args.machines)
        ]
        for m in machines:
            m.start()
        capacity = args.machines * args.workers * args.concurrency
        (
            result.idle_calls_per_worker_s,
            result.busy_calls_per_worker_s,
            result.calls_per_job,
        ) = await measure_load(queue, args.machines * args.workers, capacity, args.window_s, args.job_s)
        submitted: list[str] = []
        # Keep the survivors of a kill room for the dead machine's jobs.
        target = max(1, capacity - 2 * args.workers * args.concurrency)

        async def feed() -> None:
            while True:
                stats = await queue.stats()
                for _ in range(max(0, target - stats.waiting - stats.active)):
                    job = await queue.submit({"service": "echo", "payload": {"delay": args.job_s}})
                    submitted.append(job.id)
                await asyncio.sleep(0.2)

        feeder = asyncio.create_task(feed())
        try:
            for round_ in range(args.rounds):
                victim = machines[round_ % len(machines)]
                # Wait until the victim holds jobs, then kill at a random phase of the heartbeat cycle. The jobs
                # counted are those still leased to it after the kill (one may have finished during the wait).
                held: dict[str, str] = {}
                while not held:
                    deadline = time.monotonic() + 120
                    while not await held_by(queue, victim):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{victim.name} never held jobs: see its logs in {tmp}")
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(random.uniform(0, heartbeat_ms / 1000))
                    victim.kill()
                    killed_at = time.monotonic()
                    held = await held_by(queue, victim)
                    if not held:
                        victim.start()
                back: dict[str, float] = {}
                pending = dict(held)
                while pending:
                    pipe = queue.client.pipeline(transaction=False)
                    for job_id in pending:
                        pipe.hget(queue.keys.owner, job_id)
                        pipe.hget(queue.keys.state, job_id)
                    replies = await pipe.execute()
                    now = time.monotonic() - killed_at
                    for i, job_id in enumerate(list(pending)):
                        owner, state = replies[2 * i], replies[2 * i + 1]
                        ours = owner is not None and owner.split("|")[1].startswith(f"{victim.name}-")
                        if not ours:
                            back.setdefault(job_id, now)
                        if (owner is not None and not ours) or state in FINISHED:
                            result.back.append(back[job_id])
                            result.recoveries.append(now)
                            del pending[job_id]
                    if now > 300:
                        raise RuntimeError(f"jobs of {victim.name} never came back: {sorted(pending)}")
                    await asyncio.sleep(0.02)
                print(
                    f"  {name} round {round_ + 1}: {victim.name} killed holding {len(held)} job(s); back in line "
                    f"after {max(back.values()):.1f} s, all re-claimed after {max(result.recoveries[-len(held) :]):.1f} s",
                    flush=True,
                )
                victim.start()
        except BaseException:
            for m in machines:
                m.stop()
            raise
        finally:
            feeder.cancel()
        # Let everything submitted finish, then count.
        deadline = time.monotonic() + args.job_s * 4 + lease_ms / 1000 * 3 + 60
        while time.monotonic() < deadline:
            states = await queue.client.hmget(queue.keys.state, submitted)
            if all(s in FINISHED for s in states):
                break
            await asyncio.sleep(0.5)
        for m in machines:
            m.stop()
        completed_events: dict[str, int] = {}
        for fields in [e.fields for e in await queue.events.window(0, 10**9)]:  # a batch's entry: its events
            if fields.get("event") == "completed":
                completed_events[fields["job"]] = completed_events.get(fields["job"], 0) + 1
        finished = await queue.client.hmget(queue.keys.state, submitted)
        attempts = await queue.client.hmget(queue.keys.attempts, submitted)
        result.jobs = len(submitted)
        result.lost = sum(1 for s in finished if s != JobStatus.COMPLETED.value)
        result.doubled = sum(1 for j in submitted if completed_events.get(j, 0) > 1)
        result.reexecuted = sum(1 for a in attempts if a and int(a) > 1)
        await queue.close()
    return result


def parse_profile(text: str) -> tuple[str, int, int]:
    name, _, timing = text.partition("=")
    lease, _, beat = timing.partition("/")
    return name, int(lease), int(beat)


def main() -> None:
    defaults = QueueSettings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 machines x 1 worker, 2 rounds per profile")
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes per machine")
    parser.add_argument("--concurrency", type=int, default=2, help="jobs at once per worker")
    parser.add_argument("--rounds", type=int, default=6, help="machine kills per profile")
    parser.add_argument("--job-s", type=float, default=JOB_S, help="how long one echo job runs (s)")
    parser.add_argument("--window-s", type=float, default=20.0, help="each Redis load window (s)")
    parser.add_argument(
        "--profile",
        action="append",
        metavar="NAME=LEASE_MS/HEARTBEAT_MS",
        help="timings to compare (repeatable); default: the previous 30000/10000 and the current defaults",
    )
    args = parser.parse_args()
    if args.quick:
        args.machines, args.workers, args.rounds, args.window_s = 3, 1, 2, 5.0
    profiles = (
        [parse_profile(p) for p in args.profile]
        if args.profile
        else [
            ("30s lease", 30_000, 10_000),
            ("defaults", defaults.lease_ms, defaults.heartbeat_interval_ms),
        ]
    )
    print(machine_line())
    print(
        f"{args.machines} machines x {args.workers} workers x concurrency {args.concurrency}, "
        f"echo jobs of {args.job_s:g} s, {args.rounds} kills per profile, reaper_interval_ms "
        f"{defaults.reaper_interval_ms}"
    )
    results = [asyncio.run(run_profile(args, *p)) for p in profiles]
    rows: list[list[Any]] = []
    for r in results:
        rec, back = r.recoveries, r.back
        rows.append(
            [
                r.profile,
                f"{r.lease_ms / 1000:g} s / {r.heartbeat_ms / 1000:g} s",
                len(rec),
                f"{min(back):.1f} / {percentile(back, 50):.1f} / {percentile(back, 95):.1f} / {max(back):.1f}",
                f"{min(rec):.1f} / {percentile(rec, 50):.1f} / {percentile(rec, 95):.1f} / {max(rec):.1f}",
                r.jobs,
                r.lost,
                r.doubled,
                r.reexecuted,
                r.idle_calls_per_worker_s,
                r.busy_calls_per_worker_s,
                r.calls_per_job,
            ]
        )
    print()
    print(
        table(
            [
                "profile",
                "lease / heartbeat",
                "jobs killed",
                "back in line s (min/med/p95/max)",
                "re-claimed s (min/med/p95/max)",
                "jobs",
                "lost",
                "doubled",
                "re-executed",
                "idle calls/s/worker",
                "busy calls/s/worker",
                "calls/job",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
