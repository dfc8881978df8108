"""Redis's own cost per job under one real `appliance worker` (a component figure, not the headline of §3).

    python bench/redis_cost.py [--concurrency 8] [--jobs 6000] [--events stream+pubsub] [--before CHECKOUT]

Starts redis-server under valgrind's callgrind with instrumentation off (`--hz 1 --activerehashing no`: no timer
work), submits `--jobs` no-op echo jobs, starts one `appliance worker --connector echo --concurrency C` (the
product's entry point, default settings but `queue.events`), turns instrumentation on from 20 % to 80 % of the
jobs done (the queue's `completed` count) and prints redis-server's instructions per job in that window, with
the round trips per job (script calls, from INFO commandstats over the same window): load-independent, unlike
Redis's CPU time. With `--before`, the same with that checkout's code (its scripts and its worker), interleaved.
bench/worker_cost.py counts the worker process instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from _common import ROOT, callgrind_window, stop_process_groups, wait_for_port
from worker_cost import count, submit


def start_server(work: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """redis-server under callgrind, instrumentation off until asked; its process, URL and dump file."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(work / f"redis.{port}")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        + ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--hz", "1", "--activerehashing", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_port(port)
    return server, f"redis://127.0.0.1:{port}", out


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval", "fcall"))


def run_once(path: str, args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """(instructions per job, jobs per script call) in the window, with the code at `path`."""
    server, url, out = start_server(work)
    worker_proc = None
    try:
        client = redis.Redis.from_url(url)
        submit(url, args.jobs, path)
        env = {**os.environ, "PYTHONPATH": path, "APPLIANCE_QUEUE__EVENTS": args.events}
        worker = [sys.executable, "-m", "appliance", "worker", "--connector", "echo", "--index", "0"]
        worker += ["--concurrency", str(args.concurrency), "--redis-url", url]
        with open(work / "worker.log", "ab") as log:
            worker_proc = subprocess.Popen(
                worker, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )
        marks: list[tuple[int, int]] = []
        while len(marks) < 2 and worker_proc.poll() is None:
            done = count(client)
            if done >= args.jobs * (0.2, 0.8)[len(marks)]:
                if not marks:
                    control(server.pid, "-i", "on")
                    marks.append((count(client), script_calls(client)))
                else:
                    marks.append((count(client), script_calls(client)))
                    control(server.pid, "--dump=window")
                continue
            time.sleep(0.05)
        if len(marks) < 2:
            raise SystemExit(f"the worker stopped early: see {work / 'worker.log'}")
    finally:
        if worker_proc is not None:
            stop_process_groups([worker_proc], grace_s=30)
        server.terminate()
        server.wait()
    total = callgrind_window(work, out, args.keep)
    jobs = marks[1][0] - marks[0][0]
    # Two of the window's commands are this script's own (the marks' HGET, INFO): a few thousand instructions.
    return total / jobs, jobs / max(1, marks[1][1] - marks[0][1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--events", default="stream+pubsub", help="queue.events for the worker")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--before", help="also measure the checkout at PATH, interleaved")
    parser.add_argument("--keep", help="keep the window's callgrind dump in this file (callgrind_annotate)")
    args = parser.parse_args()
    trees = {"this tree": str(ROOT)} | ({"before": args.before} if args.before else {})
    print(
        f"# redis_cost: concurrency {args.concurrency}, {args.jobs} jobs, events {args.events}; load "
        f"{os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name, path in trees.items():
                per_job, batch = run_once(path, args, Path(tmp))
                print(
                    f"{name}: {per_job:,.0f} redis-server instructions per job, {batch:.1f} jobs per round trip",
                    flush=True,
                )


if __name__ == "__main__":
    main()
