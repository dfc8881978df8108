"""`appliance demo`: a local fleet in one command.

Uses $APPLIANCE_REDIS_URL when set; otherwise starts its own redis-server on a free loopback port. Starts echo
workers as real `appliance worker` processes, submits jobs of several priorities and shapes, shows them move
through the queue, then drains the workers with SIGTERM as systemd would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from appliance.commands import CommandError, command_help, run_async

if TYPE_CHECKING:
    from appliance.queue import Queue


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser("demo", help=command_help("demo"))
    demo.add_argument("--workers", type=int, default=2, help="echo worker processes (default 2)")
    demo.add_argument("--jobs", type=int, default=8, help="jobs to submit (default 8)")
    demo.add_argument("--concurrency", type=int, default=2, help="jobs each worker runs at once (default 2)")
    demo.add_argument("--timeout", type=float, default=120, help="give up after this many seconds")
    demo.set_defaults(handler=_demo, long_running=True)


def _demo(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.jobs < 1 or args.concurrency < 1:
        raise CommandError("--workers, --jobs and --concurrency must be at least 1")
    from appliance.localredis import LocalRedis, LocalRedisError

    url = os.environ.get("APPLIANCE_REDIS_URL")
    server = None
    if not url:
        try:
            server = LocalRedis().start()
        except LocalRedisError as exc:
            raise CommandError(str(exc)) from None
        url = server.url
        print(f"demo: started redis-server on 127.0.0.1:{server.port} (set APPLIANCE_REDIS_URL to use yours)")
    try:
        return run_async(_run(args, url))
    finally:
        if server is not None:
            server.cleanup()


async def _run(args: argparse.Namespace, url: str) -> int:
    from appliance.config import Settings
    from appliance.queue import JobStatus
    from appliance.queue.factory import connect_queue

    workers = await _start_workers(args, url)
    # The demo's own Redis (or APPLIANCE_REDIS_URL), default settings otherwise: like its workers.
    queue = await connect_queue(Settings.model_validate({"redis": {"url": url}}))
    try:
        specs: list[dict[str, Any]] = [
            {
                "service": "echo",
                "priority": 5 if i % 4 == 0 else 0,
                "payload": {"delay": 0.5 + (i % 3) * 0.5, "steps": 4, "message": f"hello #{i}"},
            }
            for i in range(args.jobs)
        ]
        started = time.monotonic()
        jobs = await queue.submit_many(specs)
        print(f"demo: submitted {len(jobs)} jobs (every 4th at priority 5)")
        await _follow(queue, [j.id for j in jobs], workers, started, deadline=started + args.timeout)
        final = [await queue.get(j.id) for j in jobs]
        done = sum(1 for j in final if j and j.status is JobStatus.COMPLETED)
        print(f"demo: {done}/{len(jobs)} jobs completed in {time.monotonic() - started:.2f}s")
        stats = await queue.stats()
        print(f"demo: queue totals {dict(sorted(stats.totals.items()))}")
        return 0 if done == len(jobs) else 1
    finally:
        await queue.close()
        await _stop_workers(workers)


async def _start_workers(args: argparse.Namespace, url: str) -> list[asyncio.subprocess.Process]:
    """`args.workers` echo workers as real `appliance worker` processes, on the demo's Redis only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        APPLIANCE_REDIS_URL=url,
        APPLIANCE_MACHINE_ID="demo",
        APPLIANCE_ECHO_ENABLED="true",
        APPLIANCE_ECHO_CONCURRENCY=str(args.concurrency),
    )
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "appliance",
            "worker",
            "--connector",
            "echo",
            "--index",
            str(i),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(args.workers)
    ]
    print(
        f"demo: started {args.workers} echo workers (demo-echo0..{args.workers - 1}), "
        f"{args.concurrency} jobs each at a time"
    )
    return workers


async def _follow(
    queue: Queue,
    job_ids: list[str],
    workers: list[asyncio.subprocess.Process],
    started: float,
    deadline: float,
) -> None:
    """Print each job's state as it changes, until all are finished or the deadline passed."""
    last: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {job_id: await queue.get(job_id) for job_id in job_ids}
        for job_id, job in states.items():
            if job is None:
                continue
            line = job.status.value
            if job.progress and not job.status.finished:
                line += f" {job.progress.get('percent', 0):.0f}%"
            if last.get(job_id) != line:
                last[job_id] = line
                who = f" on {job.worker_id}" if job.worker_id else ""
                print(f"  {time.monotonic() - started:6.2f}s  {job_id[:12]}  {line}{who}")
        if all(j is not None and j.status.finished for j in states.values()):
            return
        await _check_workers(workers)
        await asyncio.sleep(0.1)


async def _check_workers(workers: list[asyncio.subprocess.Process]) -> None:
    """A CommandError naming the last line a worker wrote, if one exited before the demo ended."""
    for proc in workers:
        if proc.returncode is not None:
            err = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
            raise CommandError(
                f"a demo worker exited early (status {proc.returncode}): "
                f"{err.strip().splitlines()[-1] if err.strip() else 'no output'}",
                1,
            )


async def _stop_workers(workers: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM, as systemd would: the workers drain; one that does not stop in 30 s is killed."""
    for proc in workers:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
    print("demo: workers drained and stopped")
