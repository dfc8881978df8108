"""One `appliance worker` process's own cost per job (a component figure, not the headline of §3).

    python bench/worker_cost.py [--concurrency 10] [--jobs 6000] [--before CHECKOUT] [--profile OUT]

Submits `--jobs` no-op echo jobs, starts one `appliance worker --connector echo --concurrency C` under valgrind's
callgrind with instrumentation off, turns it on from 20 % to 80 % of the jobs done (read from the queue's
`completed` count) and prints the worker's instructions per job in that window: load-independent, unlike its
CPU time. With `--before`, the same from that checkout's code, interleaved. With `--profile OUT`: no valgrind,
cProfile over the whole run instead, written to OUT (pstats).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from _common import ROOT, callgrind_window, private_redis, stop_process_groups


def submit(url: str, jobs: int, path: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from appliance.queue import JobSpec, Queue\n"
        "async def main():\n"
        f"    q = await Queue.connect({url!r})\n"
        f"    for s in range(0, {jobs}, 1000):\n"
        f"        await q.submit_many([JobSpec(service='echo', payload={{}}) for _ in range(min(1000, {jobs} - s))])\n"
        "    await q.close()\n"
        "asyncio.run(main())\n"
    )
    # In `path`: `python -c` puts its working directory first on sys.path, ahead of PYTHONPATH, so from this
    # checkout's root it would submit with this tree's code (its job bodies) for `--before` too.
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": path}, cwd=path)


def count(server: redis.Redis) -> int:
    return int(server.hget("appliance:{default}:counts", "completed") or 0)


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process, every thread."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def run_once(url: str, path: str, args: argparse.Namespace, work: Path) -> float:
    server = redis.Redis.from_url(url)
    server.flushall()
    submit(url, args.jobs, path)
    out = str(work / f"cg.{time.monotonic_ns()}")
    worker = [sys.executable, "-m", "appliance", "worker", "--connector", "echo", "--index", "0"]
    worker += ["--concurrency", str(args.concurrency), "--redis-url", url]
    if args.profile:
        command = [sys.executable, "-m", "cProfile", "-o", args.profile, *worker[1:]]
    elif args.strace or args.cpu:
        command = worker
    else:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *worker]
    env = {**os.environ, "PYTHONPATH": path}
    with open(work / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            command, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    marks: list[int] = []
    cpu: list[tuple[float, float]] = []
    try:
        while len(marks) < 2 and proc.poll() is None:
            done = count(server)
            if done >= args.jobs * (0.2, 0.8)[len(marks)]:
                if args.cpu:
                    cpu.append(proc_cpu(proc.pid))
                    cpu.append((time.monotonic(), 0.0))
                elif args.strace and not marks:
                    strace = subprocess.Popen(["strace", "-f", "-c", "-o", args.strace, "-p", str(proc.pid)])
                    time.sleep(0.5)  # attached to every thread
                elif args.strace:
                    strace.send_signal(signal.SIGINT)
                    strace.wait()
                elif not args.profile:
                    subprocess.run(
                        ["callgrind_control", "-z" if not marks else "--dump=window", str(proc.pid)],
                        check=True,
                    )
                marks.append(count(server))
                continue
            time.sleep(0.05)
    finally:
        stop_process_groups([proc], grace_s=60)
    if args.cpu:
        n = marks[1] - marks[0]
        user, system = ((b - a) / n * 1e6 for a, b in zip(cpu[0], cpu[2], strict=True))
        print(
            f"user {user:.1f} µs/job, system {system:.1f} µs/job, {n / (cpu[3][0] - cpu[1][0]):,.0f} jobs/s"
        )
        return user + system
    if args.profile or args.strace:
        print(f"window: {marks[1] - marks[0]} jobs")
        return 0.0
    # The dump named 'window' holds the instructions from the zeroing at 20 % to 80 %.
    total = callgrind_window(work, out, args.keep)
    return total / (marks[1] - marks[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--before", help="also measure the checkout at PATH, interleaved")
    parser.add_argument("--cpu", action="store_true", help="CPU time (user, system) per job instead")
    parser.add_argument("--keep", help="keep the window's callgrind dump in this file (callgrind_annotate)")
    parser.add_argument("--strace", help="strace -c the worker in the window into this file instead")
    parser.add_argument(
        "--profile", help="cProfile the worker into this file instead of counting instructions"
    )
    args = parser.parse_args()
    trees = {"this tree": str(ROOT)} | ({"before": args.before} if args.before else {})
    with private_redis() as local, tempfile.TemporaryDirectory() as tmp:
        url = local.url
        for _ in range(args.repeat):
            for name, path in trees.items():
                figure = run_once(url, path, args, Path(tmp))
                if not args.profile:
                    print(
                        f"{name}: {figure:,.0f} instructions per job, concurrency {args.concurrency}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
