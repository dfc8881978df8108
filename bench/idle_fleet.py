"""An idle fleet: 1,000 idle workers and a paced stream of submits. What does one job cost Redis, how fast is it
claimed, and how many connections does the fleet hold?

    python bench/idle_fleet.py [--quick] [--workers 1000] [--processes 4] [--rate 20] [--seconds 10]
                               [--before PATH] [--rounds N]

Workers are asyncio WorkerSessions spread over a few processes (each its own worker id), of 3 classes over 8
shapes (tags s0..s7; class 0 serves s0-s3, class 1 s2-s5, class 2 s4-s7), every one registered and idle before
the stream starts. The producer submits one job at a time at `rate`/s, round-robin over the shapes, each carrying
its submit time; the session that claims it notes `claimed - submitted` (same machine clock) and completes it.
Each session turns the claim loop of `appliance worker` (ClaimLoop.iteration, one slot): a turn completes the
finished job and claims in one `WorkerSession.finish_and_claim`, the call the worker makes, and a turn that did
neither waits for a wake-up; so the commands counted are the product's.

Reported, per design:
  commands per job    every command a client sent during the stream (MONITOR, not counting what scripts ran
                      inside Redis; it starts once the producer's connection is open), split by kind, divided
                      by the jobs submitted
  submit -> claimed   p50 / p99 / max (ms)
  connections         CLIENT LIST while idle: all, and pub/sub ones, per worker and per process

`--before PATH` runs the same scenario a second time with the package from PATH (a checkout of the design
before, e.g. `git worktree add /tmp/before <commit>`), in the same run, for the before/after table; `--rounds N`
repeats both N times, alternating which goes first, and adds the medians.
Not a test: it never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHAPES = 8
CLASSES = ((0, 1, 2, 3), (2, 3, 4, 5), (4, 5, 6, 7))


# --- a worker process ---------------------------------------------------------------------------------------------


async def _run(session: Any, latencies: list[float]) -> None:
    """One worker's claim loop as `appliance worker` turns it (ClaimLoop.iteration, one slot): each turn sends
    the finished job's completion with the claim for the freed slot (`WorkerSession.finish_and_claim`, the call
    the worker makes); a turn that claimed nothing and completed nothing waits for a wake-up."""
    outcomes: list[tuple[str, str, Any]] = []
    while True:
        try:
            _, claimed = await session.finish_and_claim(outcomes, 1)
        except Exception:  # a pool timeout under a claim storm: the worker retries, the outcome kept
            await asyncio.sleep(0.1)
            continue
        sent, outcomes = outcomes, []
        if not claimed:
            if not sent:
                await session.wait_for_work(3600)
            continue
        for one in claimed:  # a no-op job: done at once, its outcome rides with the next turn
            at = one.job.payload.get("t")
            if at is not None:
                latencies.append((time.time() - float(at)) * 1000)
            outcomes.append((one.job.id, one.token, None))


async def _worker_process(url: str, process: int, count: int) -> None:
    import redis.asyncio as aioredis

    from appliance.queue import Capabilities, Queue, WorkerSession
    from appliance.queue.connections import HiredisConnection

    # Commands share a pool of at most 8 connections per process; the design before took each session's pub/sub
    # connection from that pool too, so it gets one more per session. What the fleet holds is then those 8 plus
    # whatever the design adds for wake-ups.
    old_design = importlib.util.find_spec("appliance.queue.hub") is None
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=8 + (count if old_design else 0),
        decode_responses=True,
        connection_class=HiredisConnection,
    )
    queue = Queue(aioredis.Redis(connection_pool=pool), queue_name="fleet")
    latencies: list[float] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sessions = []
    for i in range(count):  # one after another: the command pool stays as small as the work needs
        tags = [f"s{s}" for s in CLASSES[(process * count + i) % len(CLASSES)]]
        caps = Capabilities(services=["echo"], tags=tags)
        sessions.append(await WorkerSession.open(queue, f"p{process}-w{i}", caps))
    tasks = [asyncio.create_task(_run(session, latencies)) for session in sessions]
    await stop.wait()
    print(json.dumps({"latencies_ms": latencies}), flush=True)
    del tasks
    os._exit(0)  # closing 250 sessions would only add noise now


# --- the orchestrator ---------------------------------------------------------------------------------------------


class Monitor:
    """MONITOR on a raw socket: the commands clients send (script-internal ones dropped)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        await reader.readline()

        async def collect() -> None:
            while line := await reader.readline():
                text = line.decode(errors="replace")
                if " lua] " not in text:
                    self.lines.append(text)

        self._task = asyncio.create_task(collect())

    async def stop(self) -> list[str]:
        await asyncio.sleep(0.5)
        assert self._task is not None and self._writer is not None
        self._task.cancel()
        self._writer.close()
        return self.lines


def _kind(line: str, names: dict[str, str]) -> str:
    parts = line.split('"')
    if len(parts) < 2:
        return "?"
    command = parts[1].upper()
    if command in ("EVALSHA", "FCALL") and len(parts) > 3:
        return names.get(parts[3], parts[3][:12])
    return command.lower()


async def _scenario(url: str, port: int, code: Path, args: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    env = {**os.environ, "PYTHONPATH": str(code)}
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    await admin.flushall()
    producer_code = f"import sys; sys.path.insert(0, {str(code)!r})"
    # The shapes exist before the workers start (one job each, claimed at start-up).
    seed = [{"service": "echo", "requirements": {"tags": [f"s{s}"]}} for s in range(SHAPES)]
    await _python(["-c", _producer_script(producer_code, url, seed, 0)], env)
    per = args["workers"] // args["processes"]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            url,
            str(p),
            str(per),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        for p in range(args["processes"])
    ]
    try:
        workers = per * args["processes"]
        deadline = time.monotonic() + 300
        while await admin.hlen("appliance:{fleet}:workers") < workers and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        # Idle: every session registered (the new design), or simply settled (the old one has no registry).
        for _ in range(120):
            if await admin.hlen("appliance:{fleet}:waiting") >= workers:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        clients = await admin.client_list()
        pubsub = sum(1 for c in clients if int(c.get("sub", 0)) > 0)
        monitor = Monitor(port)
        jobs = int(args["rate"] * args["seconds"])
        specs = [
            {"service": "echo", "requirements": {"tags": [f"s{i % SHAPES}"]}, "payload": {"t": None}}
            for i in range(jobs)
        ]
        await _stream(_producer_script(producer_code, url, specs, args["rate"]), env, monitor)
        await asyncio.sleep(2)
        lines = await monitor.stop()
        for _ in range(60):  # stragglers (the old design falls behind): claimed, if late
            if int(await admin.hget("appliance:{fleet}:counts", "completed") or 0) >= jobs + SHAPES:
                break
            await asyncio.sleep(0.5)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
    latencies: list[float] = []
    for proc in procs:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        if out.strip():
            latencies += json.loads(out.decode().strip().splitlines()[-1])["latencies_ms"]
    latencies = latencies[SHAPES:] if len(latencies) > jobs else latencies  # not the seed jobs'
    sys.path.insert(0, str(code))
    names = _script_names(code)
    kinds: dict[str, int] = {}
    for line in lines:
        kind = _kind(line, names)
        kinds[kind] = kinds.get(kind, 0) + 1
    await admin.aclose()
    return {
        "jobs": jobs,
        "claimed": len(latencies),
        "commands": len(lines),
        "kinds": kinds,
        "latencies": sorted(latencies),
        "connections": len(clients) - 1,  # not the bench's own
        "pubsub": pubsub,
        "workers": workers,
    }


async def _python(args: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, env=env)
    if await proc.wait() != 0:
        raise RuntimeError(f"{args[:2]} failed")


async def _stream(script: str, env: dict[str, str], monitor: Monitor) -> None:
    """Run the producer; MONITOR starts once its connection is open (its handshake, HELLO and PING, is not a
    job's cost), right before the first submit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    if (await proc.stdout.readline()).strip() != b"ready":
        raise RuntimeError("the producer did not start")
    await monitor.start()
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    if await proc.wait() != 0:
        raise RuntimeError("the producer failed")


def _script_names(code: Path) -> dict[str, str]:
    """SHA1 -> script name of the package at `code` (its own scripts, in a child interpreter)."""
    script = (
        "import json, sys; from appliance.queue.scripts import ScriptSet; s = ScriptSet(); "
        "print(json.dumps({s.sha(n): n for n in s.sources}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=code,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def _producer_script(prelude: str, url: str, specs: list[dict[str, Any]], rate: float) -> str:
    return f"""{prelude}
import asyncio, json, sys, time
from appliance.queue import Queue
async def main():
    queue = await Queue.connect({url!r}, queue_name="fleet")
    specs = json.loads({json.dumps(json.dumps(specs))})
    if {rate!r}:  # a stream: connected; start when told (the bench's MONITOR is on)
        await queue.client.ping()
        print("ready", flush=True)
        sys.stdin.readline()
    started = time.monotonic()
    for i, spec in enumerate(specs):
        if {rate!r}:
            pause = started + i / {rate!r} - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
        if "payload" in spec:
            spec["payload"]["t"] = time.time()
        await queue.submit(spec)
    await queue.close()
asyncio.run(main())
"""


def _pct(lat: list[float], p: float) -> float:
    return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")


def _medians(name: str, runs: list[dict[str, Any]]) -> list[Any]:
    """One design's rounds: the median of each figure, and the range of p99."""
    p99 = [_pct(r["latencies"], 99) for r in runs]
    return [
        name,
        len(runs),
        f"{statistics.median(r['commands'] / max(1, r['jobs']) for r in runs):.2f}",
        f"{statistics.median(_pct(r['latencies'], 50) for r in runs):.1f}",
        f"{statistics.median(p99):.1f} ({min(p99):.1f}-{max(p99):.1f})",
    ]


def _row(name: str, r: dict[str, Any], processes: int) -> list[Any]:
    lat = r["latencies"]

    def pct(p: float) -> float:
        return _pct(lat, p)

    return [
        name,
        f"{r['claimed']}/{r['jobs']}",
        f"{r['commands'] / max(1, r['jobs']):.2f}",
        f"{pct(50):.1f}",
        f"{pct(99):.1f}",
        f"{lat[-1]:.1f}" if lat else "n/a",
        f"{r['connections'] / r['workers']:.3f}",
        f"{r['pubsub'] / r['workers']:.3f} ({r['pubsub'] / processes:.0f}/process)",
    ]


def main() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import machine_line, private_redis, table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="120 workers in 2 processes for 3 s")
    parser.add_argument("--workers", type=int, help="idle workers (default 1,000; quick 120)")
    parser.add_argument("--processes", type=int, help="processes they are spread over (default 4; quick 2)")
    parser.add_argument("--rate", type=float, default=20, help="submits per second (default 20)")
    parser.add_argument("--seconds", type=float, help="length of the stream (default 10; quick 3)")
    parser.add_argument(
        "--before", type=Path, help="run the scenario again with the package of checkout PATH"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds, the designs' order alternating (default 1)"
    )
    options = parser.parse_args()
    quick, before = options.quick, options.before
    args = {
        "workers": options.workers or (120 if quick else 1000),
        "processes": options.processes or (2 if quick else 4),
        "rate": options.rate,
        "seconds": options.seconds or (3 if quick else 10),
    }
    results: list[tuple[str, dict[str, Any]]] = []
    designs = [("after (this tree)", ROOT), *((("before", before),) if before else ())]
    with private_redis("--maxclients", "20000") as redis:
        for n in range(options.rounds):
            for name, code in designs if n % 2 == 0 else designs[::-1]:
                label = f"{name}, round {n + 1}" if options.rounds > 1 else name
                results.append((label, asyncio.run(_scenario(redis.url, redis.port, code, args))))
    print(machine_line())
    print(
        f"{args['workers']} idle workers in {args['processes']} processes (3 classes, {SHAPES} shapes), "
        f"{args['rate']:.0f} submits/s for {args['seconds']:.0f} s, one Queue.submit at a time\n"
    )
    headers = [
        "design",
        "claimed",
        "commands/job",
        "p50 ms",
        "p99 ms",
        "max ms",
        "connections/worker",
        "pub/sub connections/worker",
    ]
    print(table(headers, [_row(n, r, args["processes"]) for n, r in results]))
    for name, r in results:
        top = sorted(r["kinds"].items(), key=lambda kv: -kv[1])[:8]
        print(
            f"\n{name}: commands by kind, per job: "
            + ", ".join(f"{k} {v / max(1, r['jobs']):.2f}" for k, v in top)
        )
    if options.rounds > 1:
        by_design = [(name, [r for label, r in results if label.startswith(name)]) for name, _ in designs]
        print(f"\nMedians of the {options.rounds} rounds (order alternating):\n")
        headers = ["design", "rounds", "commands/job", "p50 ms", "p99 ms (range)"]
        print(table(headers, [_medians(name, runs) for name, runs in by_design]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(_worker_process(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        main()
