"""Submit speed and CLI start-up, side by side with the peers' single enqueue, on one private Redis.

    python bench/submit.py [--quick] [--rounds R] [--jobs N] [--peer-python /work/bench-venv/bin/python]
                           [--before PATH]   # also `Queue.submit` of the package at PATH (the code before)

Per round (rounds interleaved, medians reported), each in its own process on the same Redis 7:
  appliance submit        `Queue.submit`, one call at a time (awaited before the next), no-op job {"service": "echo"}
  appliance submit_many   `Queue.submit_many` of the same jobs (pipelined batches of 500)
  dramatiq send           `actor.send(...)` one at a time (Dramatiq's Redis broker), under the peer interpreter
  bullmq add              `Queue.add(...)` one at a time (BullMQ's Python package), under the peer interpreter
  appliance CLI           `python -m appliance job submit --service echo` per job (process start included)
Then the CLI's own start-up, N runs of each command interleaved, median wall time and median CPU time (user +
system of the process, steadier than wall time on a shared machine): `python -c pass` (the interpreter alone),
`appliance --help` (as `python -m appliance` and as the console script beside the interpreter), `job get <id>`,
`job submit --service echo` and `job stats`, for this tree and, with `--before`, for the tree at PATH in the same
rounds. Both trees are byte-compiled first (`compileall`), as an installed package is: without .pyc files (say,
PYTHONDONTWRITEBYTECODE=1 over a source checkout) every run compiles the appliance's modules again.

Prints jobs/s for each and the ratio of appliance submit to the best peer. Not a test: never asserts on time.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = "/work/bench-venv/bin/python"


# --- the children: one enqueue loop each, timed inside the process ------------------------------------------------


async def _appliance(url: str, jobs: int, many: bool) -> float:
    from appliance.queue import Queue  # from PYTHONPATH: this tree, or the `--before` one

    queue = await Queue.connect(url, queue_name="bench")
    for _ in range(200):  # warm-up: scripts loaded, connection open, shape known
        await queue.submit({"service": "echo"})
    specs = [{"service": "echo"} for _ in range(jobs)]
    started = time.perf_counter()
    if many:
        await queue.submit_many(specs)
    else:
        for spec in specs:
            await queue.submit(spec)
    elapsed = time.perf_counter() - started
    await queue.close()
    return elapsed


def _dramatiq(url: str, jobs: int) -> float:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    dramatiq.set_broker(RedisBroker(url=url))

    @dramatiq.actor(queue_name="bench", max_retries=0)
    def noop() -> None:
        pass

    for _ in range(200):
        noop.send()
    started = time.perf_counter()
    for _ in range(jobs):
        noop.send()
    return time.perf_counter() - started


async def _bullmq(url: str, jobs: int) -> float:
    from bullmq import Queue

    queue = Queue("bench", {"connection": url})
    opts = {"removeOnComplete": True}
    for _ in range(200):
        await queue.add("noop", {}, opts)
    started = time.perf_counter()
    for _ in range(jobs):
        await queue.add("noop", {}, opts)
    elapsed = time.perf_counter() - started
    await queue.close()
    return elapsed


def child(system: str, url: str, jobs: int) -> None:
    if system == "dramatiq":
        elapsed = _dramatiq(url, jobs)
    elif system == "bullmq":
        elapsed = asyncio.run(_bullmq(url, jobs))
    else:
        elapsed = asyncio.run(_appliance(url, jobs, many=system == "submit_many"))
    print(json.dumps({"jobs_per_s": jobs / elapsed}))


# --- the orchestrator ---------------------------------------------------------------------------------------------


def run_child(python: str, system: str, url: str, jobs: int, code: Path = ROOT) -> float:
    env = {**os.environ, "PYTHONPATH": str(code)} if python == sys.executable else dict(os.environ)
    out = subprocess.run(
        [python, __file__, "--child", system, url, str(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["jobs_per_s"])


def timed(cmd: list[str], code: Path = ROOT) -> tuple[float, float]:
    """(wall s, CPU s: user + system) of one run of `cmd` with the package at `code` first on the path. It runs
    in `code`: `python -m` puts the working directory ahead of PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=env, timeout=120, cwd=code)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def wall(cmd: list[str]) -> float:
    return timed(cmd)[0]


def cli_rate(url: str, jobs: int) -> float:
    cmd = [sys.executable, "-m", "appliance", "job", "submit", "--service", "echo", "--redis-url", url]
    return jobs / sum(wall(cmd) for _ in range(jobs))


def main() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import machine_line, private_redis, table

    args = sys.argv[1:]
    quick = "--quick" in args
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else (1 if quick else 3)
    jobs = int(args[args.index("--jobs") + 1]) if "--jobs" in args else (1_000 if quick else 5_000)
    peer = args[args.index("--peer-python") + 1] if "--peer-python" in args else PEER_PYTHON
    before = Path(args[args.index("--before") + 1]) if "--before" in args else None
    has_peers = Path(peer).exists()
    for code in (ROOT, *([before] if before is not None else [])):  # as installed: with .pyc files
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(code / "appliance")], capture_output=True
        )
    runs = 5 if quick else 15
    results: dict[str, list[float]] = {}
    with private_redis() as redis:
        url = redis.url
        for _ in range(rounds):
            plan = [
                ("appliance submit", sys.executable, "submit"),
                ("appliance submit_many", sys.executable, "submit_many"),
            ]
            if has_peers:
                plan += [("dramatiq send", peer, "dramatiq"), ("bullmq add", peer, "bullmq")]
            for name, python, system in plan:
                subprocess.run(
                    ["redis-cli", "-p", str(redis.port), "flushall"], capture_output=True, check=False
                )
                results.setdefault(name, []).append(run_child(python, system, url, jobs))
            for system in ("submit", "submit_many") if before is not None else ():
                subprocess.run(
                    ["redis-cli", "-p", str(redis.port), "flushall"], capture_output=True, check=False
                )
                rate = run_child(sys.executable, system, url, jobs, before)
                results.setdefault(f"appliance {system}, before (--before)", []).append(rate)
            results.setdefault("appliance CLI (job submit)", []).append(cli_rate(url, 10 if quick else 30))
        trees = {"": ROOT, **({" (before)": before} if before is not None else {})}
        starts = cli_startup(url, runs, trees)
    print(machine_line())
    print(f"{rounds} round(s) of {jobs} jobs each, medians; one process per measurement, same Redis\n")
    best_peer = max(
        (statistics.median(results[n]) for n in ("dramatiq send", "bullmq add") if n in results), default=None
    )
    rows = []
    for name, rates in results.items():
        median = statistics.median(rates)
        ratio = f"{median / best_peer:.2f}" if best_peer else "-"
        rows.append([name, f"{median:,.0f}" if median >= 10 else f"{median:.2f}", ratio])
    print(table(["enqueue, one call at a time", "jobs/s", "x best peer"], rows))
    base = statistics.median(w for w, _ in starts["python -c pass"])
    base_cpu = statistics.median(c for _, c in starts["python -c pass"])
    print(f"\nCLI start-up, median of {runs} runs, interleaved (wall and CPU time, s):")
    rows = []
    for name, runs_of in starts.items():
        w, c = statistics.median(x for x, _ in runs_of), statistics.median(y for _, y in runs_of)
        rows.append([name, f"{w:.3f}", f"{w - base:.3f}", f"{c:.3f}", f"{c - base_cpu:.3f}"])
    print(table(["command", "wall s", "wall above python", "CPU s", "CPU above python"], rows))


def cli_startup(url: str, runs: int, trees: dict[str, Path]) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) of each CLI command under each tree, `runs` rounds interleaved (see the module doc)."""
    python = sys.executable
    script = Path(python).with_name("appliance")  # the console script pip installed beside the interpreter
    for code in trees.values():
        subprocess.run(
            [python, "-m", "compileall", "-q", str(code / "appliance")], capture_output=True, check=True
        )
    job_id = subprocess.run(
        [python, "-m", "appliance", "job", "submit", "--service", "echo", "--redis-url", url],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    ).stdout.split()[-1]
    redis = ["--redis-url", url]
    commands: list[tuple[str, list[str], Path]] = [("python -c pass", [python, "-c", "pass"], ROOT)]
    for label, code in trees.items():
        commands += [
            (f"appliance --help{label}", [python, "-m", "appliance", "--help"], code),
            *([(f"console script --help{label}", [str(script), "--help"], code)] if script.exists() else []),
            (f"appliance job get{label}", [python, "-m", "appliance", "job", "get", job_id, *redis], code),
            (
                f"appliance job submit{label}",
                [python, "-m", "appliance", "job", "submit", "--service", "echo", *redis],
                code,
            ),
            (f"appliance job stats{label}", [python, "-m", "appliance", "job", "stats", *redis], code),
        ]
    starts: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in commands}
    for _ in range(runs):
        for name, cmd, code in commands:
            starts[name].append(timed(cmd, code))
    return starts


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
