"""Submit speed and CLI start-up, side by side with the peers' single enqueue, on one private Redis.

    python bench/submit.py [--quick] [--rounds R] [--jobs N] [--peer-python /work/bench-venv/bin/python]
                           [--before PATH]   # also `Queue.submit` of the package at PATH (the code before)
                           [--instructions]  # only instruction counts (valgrind callgrind), see below

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

Prints jobs/s for each and the ratio of appliance submit to the best peer, and a second table of where one call's
time goes for each one-at-a-time enqueue: wall time, the client process's CPU (user + system, `getrusage`), the
server's time in the script (`INFO commandstats`: EVALSHA's usec per call) and the rest (the wait between the two:
the network stack, waking each side), all per call, medians over the rounds. The ratio is also given as the median
of each round's own ratio (appliance `submit` and Dramatiq's `send` run one after the other in every round), which
a shared machine's swings disturb less than a ratio of medians. Not a test: never asserts on time.

`--instructions` counts instead of timing, which no other load on the machine changes: per one-at-a-time
`submit` (this tree, `--before`'s) and Dramatiq `send`, the instructions redis-server runs (redis-server under
callgrind, `--hz 1`, as bench/round_trip.py counts) and those of the client process (the child under callgrind,
collecting only around its loop: user space, not the kernel's send and receive), each after 1,000 warm calls.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = "/work/bench-venv/bin/python"


# --- the children: one enqueue loop each, timed inside the process ------------------------------------------------


#: In a child counting instructions: 'self' (it runs under callgrind, collecting only around its loop) or
#: 'server:<pid>' (redis-server runs under callgrind: zeroed before the loop, dumped as 'window' after it).
COUNT_ENV = "SUBMIT_BENCH_COUNT"
WARM_COUNTED = 1_000


def _window(start: bool) -> None:
    """Open (start) or close the counting window of a child counting instructions; nothing otherwise."""
    how = os.environ.get(COUNT_ENV, "")
    if how == "self":
        args = ["-i", "on" if start else "off", str(os.getpid())]
    elif how.startswith("server:"):
        args = ["-z" if start else "--dump=window", how.split(":", 1)[1]]
    else:
        return
    subprocess.run(["callgrind_control", *args], capture_output=True, check=True)


def _warm() -> int:
    return WARM_COUNTED if os.environ.get(COUNT_ENV) else 200


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _appliance(url: str, jobs: int, many: bool) -> tuple[float, float]:
    from appliance.queue import Queue  # from PYTHONPATH: this tree, or the `--before` one

    queue = await Queue.connect(url, queue_name="bench")
    for _ in range(_warm()):  # warm-up: scripts loaded, connection open, shape known
        await queue.submit({"service": "echo"})
    specs = [{"service": "echo"} for _ in range(jobs)]
    _window(True)
    cpu, started = _cpu_s(), time.perf_counter()
    if many:
        await queue.submit_many(specs)
    else:
        for spec in specs:
            await queue.submit(spec)
    elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu
    _window(False)
    await queue.close()
    return elapsed, cpu


def _dramatiq(url: str, jobs: int) -> tuple[float, float]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    dramatiq.set_broker(RedisBroker(url=url))

    @dramatiq.actor(queue_name="bench", max_retries=0)
    def noop() -> None:
        pass

    for _ in range(_warm()):
        noop.send()
    _window(True)
    cpu, started = _cpu_s(), time.perf_counter()
    for _ in range(jobs):
        noop.send()
    elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu
    _window(False)
    return elapsed, cpu


async def _bullmq(url: str, jobs: int) -> tuple[float, float]:
    from bullmq import Queue

    queue = Queue("bench", {"connection": url})
    opts = {"removeOnComplete": True}
    for _ in range(200):
        await queue.add("noop", {}, opts)
    cpu, started = _cpu_s(), time.perf_counter()
    for _ in range(jobs):
        await queue.add("noop", {}, opts)
    elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu
    await queue.close()
    return elapsed, cpu


def child(system: str, url: str, jobs: int) -> None:
    if system == "dramatiq":
        elapsed, cpu = _dramatiq(url, jobs)
    elif system == "bullmq":
        elapsed, cpu = asyncio.run(_bullmq(url, jobs))
    else:
        elapsed, cpu = asyncio.run(_appliance(url, jobs, many=system == "submit_many"))
    print(
        json.dumps(
            {"jobs_per_s": jobs / elapsed, "wall_us": elapsed / jobs * 1e6, "cpu_us": cpu / jobs * 1e6}
        )
    )


# --- the orchestrator ---------------------------------------------------------------------------------------------


def run_child(python: str, system: str, redis: Any, jobs: int, code: Path = ROOT) -> dict[str, float]:
    """One measurement on a flushed server: the child's figures, and `server_us`, the script's time per call."""
    cli = ["redis-cli", "-p", str(redis.port)]
    subprocess.run([*cli, "flushall"], capture_output=True, check=False)
    subprocess.run([*cli, "config", "resetstat"], capture_output=True, check=False)
    env = {**os.environ, "PYTHONPATH": str(code)} if python == sys.executable else dict(os.environ)
    out = subprocess.run(
        [python, __file__, "--child", system, redis.url, str(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=True,
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    stats = subprocess.run([*cli, "info", "commandstats"], capture_output=True, text=True).stdout
    line = next((x for x in stats.splitlines() if x.startswith("cmdstat_evalsha:")), "")
    fields = dict(f.split("=", 1) for f in line.split(":", 1)[-1].split(",") if "=" in f)
    figures["server_us"] = float(fields.get("usec_per_call", "nan"))
    return figures


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

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1,000 jobs, 5 start-up runs")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--jobs", type=int, help="jobs per measurement (default 5,000; quick 1,000)")
    parser.add_argument("--peer-python", default=PEER_PYTHON, help="interpreter with dramatiq and bullmq")
    parser.add_argument("--before", type=Path, help="also the package of the checkout PATH (the code before)")
    parser.add_argument("--instructions", action="store_true", help="only count instructions (callgrind)")
    options = parser.parse_args()
    if options.instructions:
        count_instructions(options.peer_python, options.before, 600)
        return
    quick, peer, before = options.quick, options.peer_python, options.before
    rounds = options.rounds or (1 if quick else 3)
    jobs = options.jobs or (1_000 if quick else 5_000)
    has_peers = Path(peer).exists()
    for code in (ROOT, *([before] if before is not None else [])):  # as installed: with .pyc files
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(code / "appliance")], capture_output=True
        )
    runs = 5 if quick else 15
    results: dict[str, list[dict[str, float]]] = {}
    with private_redis() as redis:
        url = redis.url
        for _ in range(rounds):
            # appliance submit and Dramatiq's send one after the other: each round's ratio pairs them.
            plan = [("appliance submit", sys.executable, "submit", ROOT)]
            if has_peers:
                plan += [("dramatiq send", peer, "dramatiq", ROOT)]
            if before is not None:
                plan += [("appliance submit, before (--before)", sys.executable, "submit", before)]
            plan += [("appliance submit_many", sys.executable, "submit_many", ROOT)]
            if before is not None:
                plan += [("appliance submit_many, before (--before)", sys.executable, "submit_many", before)]
            if has_peers:
                plan += [("bullmq add", peer, "bullmq", ROOT)]
            for name, python, system, code in plan:
                results.setdefault(name, []).append(run_child(python, system, redis, jobs, code))
            rate = cli_rate(url, 10 if quick else 30)
            results.setdefault("appliance CLI (job submit)", []).append({"jobs_per_s": rate})
        trees = {"": ROOT, **({" (before)": before} if before is not None else {})}
        starts = cli_startup(url, runs, trees)
    print(machine_line())
    print(f"{rounds} round(s) of {jobs} jobs each, medians; one process per measurement, same Redis\n")
    print(rates_table(results))
    print(f"\nOne call at a time, per call (µs, medians of {rounds} rounds):")
    print(breakdown_table(results))
    base = statistics.median(w for w, _ in starts["python -c pass"])
    base_cpu = statistics.median(c for _, c in starts["python -c pass"])
    print(f"\nCLI start-up, median of {runs} runs, interleaved (wall and CPU time, s):")
    rows = []
    for name, runs_of in starts.items():
        w, c = statistics.median(x for x, _ in runs_of), statistics.median(y for _, y in runs_of)
        rows.append([name, f"{w:.3f}", f"{w - base:.3f}", f"{c:.3f}", f"{c - base_cpu:.3f}"])
    print(table(["command", "wall s", "wall above python", "CPU s", "CPU above python"], rows))


def count_instructions(peer: str, before: Path | None, jobs: int) -> None:
    """Instructions per call (module doc, `--instructions`): redis-server's and the client process's."""
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import machine_line, private_redis, table
    from round_trip import start_callgrind, stop_and_count

    plan = [("appliance submit", sys.executable, "submit", ROOT)]
    if before is not None:
        plan += [("appliance submit, before (--before)", sys.executable, "submit", before)]
    if Path(peer).exists():
        plan += [("dramatiq send", peer, "dramatiq", ROOT)]
    rows = []
    for name, python, system, code in plan:
        env = {**os.environ, "PYTHONPATH": str(code)} if python == sys.executable else dict(os.environ)
        child_cmd = [__file__, "--child", system]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        out = f"/tmp/submit_bench_callgrind.{port}"
        server = start_callgrind(port, out)
        try:
            subprocess.run(
                [python, *child_cmd, f"redis://127.0.0.1:{port}", str(jobs)],
                env={**env, COUNT_ENV: f"server:{server.pid}"},
                capture_output=True,
                timeout=600,
                check=True,
            )
        finally:
            server_ir = stop_and_count(server, out) / jobs
        real = subprocess.run(
            [python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, check=True
        ).stdout.strip()  # valgrind must run the interpreter itself, not a wrapper script (pyenv's shims)
        with private_redis() as redis:
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.client"]
                + [real, *child_cmd, redis.url, str(jobs)],
                env={**env, COUNT_ENV: "self"},
                capture_output=True,
                timeout=600,
                check=True,
            )
        client_ir = _summary(f"{out}.client") / jobs
        rows.append([name, f"{server_ir:,.0f}", f"{client_ir:,.0f}", f"{server_ir + client_ir:,.0f}"])
    print(machine_line())
    print(f"instructions per call, {jobs} calls counted after {WARM_COUNTED:,} (valgrind callgrind)\n")
    print(table(["one call at a time", "redis-server", "client process (user space)", "both"], rows))


def _summary(out: str) -> int:
    """The instructions a callgrind run counted (every dump of `out`), and the dumps removed."""
    total = 0
    for name in glob.glob(out + "*"):
        with open(name) as dump:
            # `summary:` (0 when collection started off) or `totals:`, whichever counted
            total += max(int(line.split()[1]) for line in dump if line.startswith(("summary:", "totals:")))
        os.remove(name)
    return total


def rates_table(results: dict[str, list[dict[str, float]]]) -> str:
    from _common import table

    def median(name: str, key: str = "jobs_per_s") -> float:
        return statistics.median(r[key] for r in results[name])

    best_peer = max((median(n) for n in ("dramatiq send", "bullmq add") if n in results), default=None)
    paired = [
        a["jobs_per_s"] / d["jobs_per_s"]
        for a, d in zip(results["appliance submit"], results.get("dramatiq send", []), strict=False)
    ]
    rows = []
    for name in results:
        rate = median(name)
        ratio = f"{rate / best_peer:.2f}" if best_peer else "-"
        if name == "appliance submit" and paired:
            ratio += f" (per round vs Dramatiq: median {statistics.median(paired):.2f}, "
            ratio += f"{min(paired):.2f}-{max(paired):.2f})"
        rows.append([name, f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}", ratio])
    return table(["enqueue, one call at a time", "jobs/s", "x best peer"], rows)


def breakdown_table(results: dict[str, list[dict[str, float]]]) -> str:
    from _common import table

    rows = []
    for name, runs in results.items():
        if "submit_many" in name or "CLI" in name:
            continue
        wall, cpu, server = (
            statistics.median(r[k] for r in runs) for k in ("wall_us", "cpu_us", "server_us")
        )
        rows.append([name, f"{wall:.0f}", f"{cpu:.0f}", f"{server:.1f}", f"{wall - cpu - server:.0f}"])
    return table(["system", "wall", "client CPU", "server (script)", "rest (wait, network)"], rows)


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
