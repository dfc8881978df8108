"""What Redis does for a worker's round trip: the product's finish_claim.lua next to BullMQ's worker, per job.

    python bench/round_trip.py [--quick] [--before CHECKOUT] [--instructions] [--bullmq-python PATH]

A component figure, not the end-to-end one (that is bench/throughput.py). Three parts, each on its own private
redis-server:

1. The product's round trip, `Queue.finish_and_claim` one call at a time (a worker's loop: complete the finished
   jobs, claim as many), with batches of 1 and 10 jobs: from INFO commandstats, the server µs of the script per
   call and per job, and the Redis commands the script runs per job (by command).
2. With `--before CHECKOUT`: the same round trips through this tree's scripts and the checkout's, on one server,
   in alternating blocks of 10 calls (ABBA order; same data, same moment): the median server µs per call of
   each, and the median ratio of the pairs. The
   machine is noisy; only this paired ratio is steady.
   With `--instructions` as well: the instructions redis-server executes per job for each side's scripts,
   counted by valgrind's callgrind (redis-server started under it, `--hz 1 --activerehashing no` so the timer's
   background work stays out of the window; 200 round trips after 700 that convert every hash to its
   hashtable encoding). A count, not a time: steady within a few percent from run to run, whatever the load.
3. BullMQ's Python Worker (concurrency 1 and 10, `removeOnComplete`, bench/peers/peer_bullmq.py) draining the
   same number of no-op jobs, under its own interpreter: script calls, commands and script µs per job.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from _common import ROOT, machine_line, private_redis, stop_process_groups, table, wait_for_port

from appliance.queue import JobSpec, Queue

PEERS_DIR = Path(__file__).resolve().parent / "peers"
BLOCK = 10
#: Commands that are not a script's own work (the benchmark's reads, the script calls themselves).
NOT_INNER = {
    "evalsha",
    "eval",
    "fcall",
    "info",
    "config|resetstat",
    "script|load",
    "flushall",
    "llen",
    "zcard",
}


def per_job(stats: dict[str, Any], jobs: int) -> dict[str, float]:
    """Calls per job of each command in an INFO commandstats reply."""
    return {k.removeprefix("cmdstat_"): int(v["calls"]) / jobs for k, v in stats.items()}


def script_usec(stats: dict[str, Any]) -> tuple[int, int]:
    s = stats.get("cmdstat_evalsha") or {"calls": 0, "usec": 0}
    return int(s["calls"]), int(s["usec"])


async def fill(queue: Queue, jobs: int) -> list[str]:
    shapes: list[str] = []
    for start in range(0, jobs, 1_000):
        made = await queue.submit_many(
            [JobSpec(service="echo", payload={}) for _ in range(min(1_000, jobs - start))]
        )
        shapes = [made[0].shape]
    return shapes


async def product(url: str, jobs: int, batch: int) -> dict[str, Any]:
    """One worker's loop of round trips over `jobs` no-op jobs, one call at a time."""
    queue = await Queue.connect(url)
    await queue.client.flushall()
    shapes = await fill(queue, jobs)
    _, held = await queue.finish_and_claim([], "w", shapes, batch)
    await queue.client.config_resetstat()
    done = 0
    while held:
        outcomes = [(c.job.id, c.token, {}) for c in held]
        _, held = await queue.finish_and_claim(outcomes, "w", shapes, batch)
        done += len(outcomes)
    stats = await queue.client.info("commandstats")
    await queue.close()
    calls, usec = script_usec(stats)
    counts = per_job(stats, done)
    return {
        "script calls/job": calls / done,
        "script µs/call": usec / calls,
        "script µs/job": usec / done,
        "commands/job": sum(n for c, n in counts.items() if c not in NOT_INNER),
        "by command": {c: n for c, n in counts.items() if c not in NOT_INNER},
    }


def sources_of(checkout: str) -> dict[str, str]:
    """The scripts as the checkout's loader builds them."""
    code = "import json; from appliance.queue.scripts import load_sources; print(json.dumps(load_sources()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": checkout},
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    sources: dict[str, str] = json.loads(out.stdout)
    return sources


def use_sources(queue: Queue, sources: dict[str, str]) -> None:
    """Make `queue` call the checkout's scripts. A checkout older than finish_claim_quiet.lua (issue 14) gets
    finish_claim.lua's calls without the one-shape field (ARGV[7+m+r]), and answers of three."""
    queue.scripts.sources = sources
    queue.scripts.__post_init__()  # the SHAs of the checkout's sources
    if "finish_claim_quiet" in sources:
        return
    leases, newer = queue.leases, queue.leases.finish_claim_call

    async def older(complete: Any, claim: Any, worker_class: Any, idle_channel: str | None = None) -> Any:
        name, keys, args = newer(complete, claim, worker_class, idle_channel)
        common = len(queue.conn.common())
        registration = common + 1 + int(args[common])  # r, after m and complete's ARGV
        at = registration + 1 + int(args[registration])  # the one-shape field, after the registration
        return list(await queue.conn.run((name, keys, [*args[:at], *args[at + 1 :]])))

    leases.round_trip = older  # type: ignore[method-assign]


async def paired(url: str, before: dict[str, str], jobs: int, batch: int) -> tuple[float, float, float, int]:
    """Server µs per round trip, this tree's scripts against the checkout's, on one server: blocks of BLOCK calls
    in turn (ABBA order, so drift favours neither); the medians of each side and of the per-cycle ratios."""
    mine = await Queue.connect(url, queue_name="mine")
    await mine.client.flushall()
    theirs = await Queue.connect(url, queue_name="before")
    use_sources(theirs, before)
    loops: dict[Queue, tuple[list[str], list[Any]]] = {}
    for queue in (mine, theirs):
        shapes = await fill(queue, jobs)
        loops[queue] = (shapes, (await queue.finish_and_claim([], "w", shapes, batch))[1])

    async def block(queue: Queue) -> float | None:
        c0, u0 = script_usec(await mine.client.info("commandstats"))
        for _ in range(BLOCK):
            shapes, held = loops[queue]
            if not held:
                break
            outcomes = [(c.job.id, c.token, {}) for c in held]
            loops[queue] = (shapes, (await queue.finish_and_claim(outcomes, "w", shapes, batch))[1])
        c1, u1 = script_usec(await mine.client.info("commandstats"))
        return (u1 - u0) / (c1 - c0) if c1 > c0 else None

    ours: list[float] = []
    others: list[float] = []
    ratios: list[float] = []
    cycle = 0
    while all(held for _, held in loops.values()):
        order = (mine, theirs) if cycle % 2 == 0 else (theirs, mine)
        got = {queue: await block(queue) for queue in order}
        a, b = got[mine], got[theirs]
        if a is not None and b is not None:
            ours.append(a)
            others.append(b)
            ratios.append(a / b)
        cycle += 1
    await mine.close()
    await theirs.close()
    return statistics.median(ours), statistics.median(others), statistics.median(ratios), len(ratios)


def start_callgrind(port: int, out: str) -> subprocess.Popen[bytes]:
    """redis-server under callgrind on `port`, answering; `--hz 1 --activerehashing no`: no timer work."""
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "redis-server", "--port", str(port)]
        + ["--save", "", "--appendonly", "no", "--hz", "1", "--activerehashing", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return server


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=True)


def stop_and_count(server: subprocess.Popen[bytes], out: str) -> int:
    """Stop the server; the instructions of the dump named 'window'."""
    server.terminate()
    server.wait()
    total = 0
    for name in glob.glob(out + "*"):
        with open(name) as dump:
            text = dump.read()
        if "window" in text:
            found = re.search(r"^summary: (\d+)", text, re.M)
            total = int(found.group(1)) if found else 0
        os.remove(name)
    return total


async def instructions(sources: dict[str, str] | None, batch: int, rounds: int = 200) -> float:
    """redis-server's instructions per job over `rounds` round trips (callgrind), with `sources` (None: this
    tree's scripts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = f"/tmp/round_trip_callgrind.{port}"
    server = await asyncio.to_thread(start_callgrind, port, out)
    try:
        queue = await Queue.connect(f"redis://127.0.0.1:{port}")
        if sources is not None:
            use_sources(queue, sources)
        warm = max(700 // batch, 100)
        shapes = await fill(queue, batch * (warm + rounds + 2))
        _, held = await queue.finish_and_claim([], "w", shapes, batch)
        for n in range(warm + rounds):
            if n == warm:
                await asyncio.to_thread(callgrind_control, server.pid, "-z")
            outcomes = [(c.job.id, c.token, {}) for c in held]
            _, held = await queue.finish_and_claim(outcomes, "w", shapes, batch)
        await asyncio.to_thread(callgrind_control, server.pid, "--dump=window")
        await queue.close()
    finally:
        total = await asyncio.to_thread(stop_and_count, server, out)
    return total / (rounds * batch)


def bullmq(python: str, url: str, jobs: int, concurrency: int) -> dict[str, Any] | str:
    """BullMQ's Worker draining `jobs` no-op jobs: its script calls and commands per job (or why it could not)."""
    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushall()
    adapter = str(PEERS_DIR / "peer_bullmq.py")
    made = subprocess.run(
        [python, adapter, "produce", "bulk", url, str(jobs), "0"],
        capture_output=True,
        text=True,
        cwd=PEERS_DIR,
    )
    if made.returncode != 0:
        return (
            f"skipped: {made.stderr.strip().splitlines()[-1][:100] if made.stderr.strip() else 'no producer'}"
        )
    r.config_resetstat()
    worker = subprocess.Popen(
        [python, adapter, "worker", url, str(concurrency)],
        cwd=PEERS_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            left = r.llen("bull:bench:wait") + r.llen("bull:bench:active") + r.zcard("bull:bench:prioritized")
            if left == 0:
                break
            time.sleep(0.05)
        stats = r.info("commandstats")
    finally:
        stop_process_groups([worker])
    calls, usec = script_usec(stats)
    counts = per_job(stats, jobs)
    return {
        "script calls/job": calls / jobs,
        "script µs/call": usec / max(calls, 1),
        "script µs/job": usec / jobs,
        "commands/job": sum(n for c, n in counts.items() if c not in NOT_INNER and c != "bzpopmin"),
        "by command": {c: n for c, n in counts.items() if c not in NOT_INNER},
    }


async def run(args: argparse.Namespace) -> None:
    jobs = 1_000 if args.quick else 3_000
    print(
        f"# round_trip ({'quick' if args.quick else 'full'}) on {machine_line()}; load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    with private_redis() as server:
        for batch in (1, 10):
            found = await product(server.url, jobs * (1 if batch == 1 else 3), batch)
            rows.append([f"appliance finish_claim, batch {batch}", *(found[k] for k in list(found)[:4])])
            top = sorted(found["by command"].items(), key=lambda kv: -kv[1])
            print(f"appliance batch {batch}, commands per job: " + ", ".join(f"{c} {n:.2f}" for c, n in top))
        for concurrency in (1, 10):
            got = bullmq(args.bullmq_python, server.url, jobs, concurrency)
            if isinstance(got, str):
                print(f"bullmq concurrency {concurrency}: {got}")
                continue
            rows.append([f"bullmq Worker, concurrency {concurrency}", *(got[k] for k in list(got)[:4])])
            top = sorted(got["by command"].items(), key=lambda kv: -kv[1])
            print(
                f"bullmq concurrency {concurrency}, commands per job: "
                + ", ".join(f"{c} {n:.2f}" for c, n in top)
            )
        print()
        print(
            table(["round trip", "script calls/job", "script µs/call", "script µs/job", "commands/job"], rows)
        )
        if args.before:
            before = sources_of(args.before)
            print()
            for batch in (1, 10):
                ours, theirs, ratio, n = await paired(
                    server.url, before, jobs * (2 if batch == 1 else 6), batch
                )
                print(
                    f"paired, batch {batch} ({n} cycles of {BLOCK} calls each): this tree {ours:.1f} µs per call, "
                    f"{args.before} {theirs:.1f} µs; median ratio {ratio:.2f}x"
                )
            if args.instructions:
                for batch in (1, 10):
                    ours_ir = await instructions(None, batch)
                    theirs_ir = await instructions(before, batch)
                    print(
                        f"instructions per job (callgrind), batch {batch}: this tree {ours_ir:,.0f}, "
                        f"{args.before} {theirs_ir:,.0f} -> {ours_ir / theirs_ir:.2f}x"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs (under a minute)")
    parser.add_argument(
        "--before", metavar="CHECKOUT", help="pair each round trip with this checkout's scripts"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="with --before: also count instructions (valgrind callgrind)",
    )
    parser.add_argument(
        "--bullmq-python",
        default=os.environ.get("BENCH_PEER_PYTHON", "/work/bench-venv/bin/python"),
        help="an interpreter with the bullmq package",
    )
    sys.path.insert(0, str(ROOT))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
