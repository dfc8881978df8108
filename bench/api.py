"""The HTTP job API: `POST /v1/jobs` against direct `Queue.submit` in the same run, and SSE fan-out.

Part 1 (submit), in interleaved rounds: `Queue.submit` from this process (the baseline: 32 concurrent tasks),
and `POST /v1/jobs` to one `appliance api` process (`api x1`) and to one `appliance api` with `api.processes = 2`
(`api x2`: two processes on one port, as deployed), all with default settings. The HTTP client is `wrk` (one
thread, 32 keep-alive connections, a Lua script POSTing a valid job with the bearer token; bench/_wrk.py): in
real deployments the clients are other machines, so the client is kept cheap and its CPU reported apart. Without
wrk (or with `--python-client`) this process POSTs with aiohttp instead, and says so. Each HTTP cell's processes
run only during that cell (an idle API process still reads the event stream, for webhooks). Each cell reports
jobs/s and the p50/p99 latency of one submit; `x direct` is the HTTP rate over the direct rate of the same round
(the headline: `api x2`), and `p50 x` / `p99 x` the direct latency over the HTTP latency (medians over rounds;
1.0 = as good as direct). `API µs`, `Redis µs`, `client µs`: CPU time per job of the cell's API processes, of
redis-server and of the client (this process for direct; wrk, from the kernel's accounting of the exited
process): on a shared machine these move far less with the load than the rates do.
`--compare CHECKOUT` adds the same cells for another checkout's API (`before x1`, `before x2`; it must have
`api.processes`, main from 0eef8a7 on).

Part 2 (fan-out): 1,000 SSE clients (`GET /v1/jobs/{id}/events`) on one API process, spread over 10 jobs; a worker
then reports progress on each job; events delivered per second (all clients, first progress to last delivery)
and the API process's resident memory per connected client (RSS after connecting minus before, over clients).

Run as `python bench/api.py [--quick] [--rounds N] [--compare CHECKOUT] [--python-client] [--no-fanout]
[--json]`. Everything (Redis, API processes, clients) shares this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the checkout on sys.path
import _wrk
import aiohttp
from _common import machine_line, percentile, private_redis, table

from appliance.api.keys import KeyStore, Scope
from appliance.queue import Capabilities, Queue, WorkerSession


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(
    redis_url: str, processes: int = 1, tree: Path = _common.ROOT
) -> tuple[subprocess.Popen[bytes], str]:
    """`appliance api` of the checkout `tree` with default settings (but `processes`), on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_REDIS_URL=redis_url, APPLIANCE_LOGGING__LEVEL="WARNING", PYTHONPATH=str(tree))
    if processes > 1:
        env["APPLIANCE_API__PROCESSES"] = str(processes)
    # In the checkout: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tree,
    )
    return proc, f"http://127.0.0.1:{port}"


def listeners(port: int) -> int:
    """Sockets listening on `port` (state 0A in /proc/net/tcp): the processes of one `--processes` API."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


async def wait_ready(http: aiohttp.ClientSession, base: str, processes: int = 1) -> None:
    for _ in range(1200):
        try:
            async with http.get(base + "/readyz") as resp:
                if resp.status == 200 and listeners(int(base.rsplit(":", 1)[1])) >= processes:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{base} did not get ready")


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


async def run_cell(submit: Any, jobs: int, concurrency: int) -> tuple[float, list[float]]:
    """(jobs/s, latencies in ms) of `jobs` submits by `concurrency` tasks."""
    latencies: list[float] = []
    left = iter(range(jobs))

    async def one_client() -> None:
        for i in left:
            started = time.perf_counter()
            await submit(i)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return jobs / (time.perf_counter() - started), latencies


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its children that still run."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return total + sum(cpu_s(int(child)) for child in children.read().split())


async def redis_cpu_s(queue: Queue) -> float:
    info = await queue.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measured(queue: Queue, pids: list[int], cell: Any) -> tuple[float, list[float], dict[str, float]]:
    """run_cell, and the CPU each party spent per job (µs): the API processes, Redis, this client."""
    api, red, own = sum(cpu_s(p) for p in pids), await redis_cpu_s(queue), own_cpu_s()
    rate, lat = await cell
    jobs = len(lat)
    cpu = {
        "api": (sum(cpu_s(p) for p in pids) - api) / jobs * 1e6,
        "redis": (await redis_cpu_s(queue) - red) / jobs * 1e6,
        "client": (own_cpu_s() - own) / jobs * 1e6,
    }
    return rate, lat, cpu


async def measured_wrk(queue: Queue, pids: list[int], url: str, token: str, seconds: int) -> dict[str, float]:
    """One wrk run against `url`: the rate, its p50/p99, and the CPU per job (µs) of the API processes, Redis
    and wrk itself (from the kernel's accounting of the exited wrk)."""
    api, red = sum(cpu_s(p) for p in pids), await redis_cpu_s(queue)
    run = await asyncio.to_thread(_wrk.run, url, token, seconds, CONCURRENCY)
    jobs = run.requests
    return {
        "rate": run.rate,
        "p50": run.p50_ms,
        "p99": run.p99_ms,
        "api": (sum(cpu_s(p) for p in pids) - api) / jobs * 1e6,
        "redis": (await redis_cpu_s(queue) - red) / jobs * 1e6,
        "client": run.cpu_s / jobs * 1e6,
    }


def summary(rate: float, lat: list[float], cpu: dict[str, float]) -> dict[str, float]:
    return {"rate": rate, "p50": percentile(lat, 50), "p99": percentile(lat, 99), **cpu}


#: Keep-alive connections of wrk, and tasks of the Python clients (direct, and HTTP without wrk).
CONCURRENCY = 32
#: The HTTP cells: (name, checkout: None = this one / "before" = --compare's, processes of one `appliance api`).
CELLS = (
    ("api x1", None, 1),
    ("api x2", None, 2),
    ("before x1", "before", 1),
    ("before x2", "before", 2),
)


async def submit_part(
    redis_url: str, jobs: int, seconds: int, rounds: int, before: Path | None, use_wrk: bool
) -> dict[str, Any]:
    """Each cell's API processes run only during that cell (started, warmed up, measured, stopped): an idle
    API process still reads the event stream (for webhooks), and would take CPU from the cells around it."""
    queue = await Queue.connect(redis_url)
    _, token = await KeyStore(queue.client, queue.keys).create(
        "bench", [Scope.SUBMIT], rate_per_s=1_000_000, max_in_flight=10_000_000
    )
    headers = {"Authorization": f"Bearer {token}"}
    cells = [c for c in CELLS if before is not None or c[1] is None]
    runs: dict[str, list[dict[str, float]]] = {"direct": [], **{c[0]: [] for c in cells}}
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

            async def direct(i: int) -> None:
                await queue.submit({"service": "echo", "payload": {"i": i}, "customer_id": "bench"})

            def over_http(base: str) -> Any:
                async def post(i: int) -> None:
                    async with http.post(
                        base + "/v1/jobs", json={"service": "echo", "payload": {"i": i}}
                    ) as resp:
                        if resp.status != 202:
                            raise SystemExit(f"submit answered {resp.status}: {await resp.text()}")

                return post

            await run_cell(direct, min(200, jobs), CONCURRENCY)  # warm-up
            for _ in range(rounds):
                runs["direct"].append(
                    summary(*await measured(queue, [], run_cell(direct, jobs, CONCURRENCY)))
                )
                for name, tree, processes in cells:
                    proc, base = start_api(redis_url, processes, before if tree else _common.ROOT)
                    try:
                        await wait_ready(http, base, processes)
                        if use_wrk:  # warm-up: keys known, scripts loaded
                            await asyncio.to_thread(_wrk.run, base + "/v1/jobs", token, 1, CONCURRENCY)
                            cell = await measured_wrk(queue, [proc.pid], base + "/v1/jobs", token, seconds)
                        else:
                            post = over_http(base)
                            await run_cell(post, min(200, jobs), CONCURRENCY)
                            cell = summary(
                                *await measured(queue, [proc.pid], run_cell(post, jobs, CONCURRENCY))
                            )
                    finally:
                        stop_api(proc)
                    runs[name].append(cell)
    finally:
        await queue.close()
    return {
        "jobs": jobs,
        "seconds": seconds,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "client": "wrk" if use_wrk else "python",
        "rows": [row(name, cell, runs["direct"]) for name, cell in runs.items()],
    }


def row(name: str, cell: list[dict[str, float]], direct: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over rounds; each ratio is taken against the direct cell of the same round."""

    def median(key: str) -> float:
        return statistics.median(c[key] for c in cell)

    def against(f: Any) -> float:
        return statistics.median(f(c, d) for c, d in zip(cell, direct, strict=True))

    return {
        "cell": name,
        "jobs_per_s": median("rate"),
        **{f"{k}_us": median(k) for k in ("api", "redis", "client")},
        "p50_ms": median("p50"),
        "p99_ms": median("p99"),
        "ratio": against(lambda c, d: c["rate"] / d["rate"]),
        "p50_ratio": against(lambda c, d: d["p50"] / c["p50"]),
        "p99_ratio": against(lambda c, d: d["p99"] / c["p99"]),
    }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


async def fanout_part(redis_url: str, clients: int, job_count: int, progress: int) -> dict[str, Any]:
    queue = await Queue.connect(redis_url)
    await queue.client.flushall()
    _, token = await KeyStore(queue.client, queue.keys).create("fan", [Scope.READ], rate_per_s=100_000)
    jobs = [(await queue.submit({"service": "echo", "customer_id": "fan"})).id for _ in range(job_count)]
    proc, base = start_api(redis_url)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    received = [0] * clients
    connected = 0
    all_connected = asyncio.Event()
    session = await WorkerSession.open(queue, "bench-w", Capabilities(services=["echo"]))
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            await wait_ready(http, base)
            before = rss_kib(proc.pid)

            async def client(n: int) -> None:
                nonlocal connected
                async with http.get(f"{base}/v1/jobs/{jobs[n % job_count]}/events") as resp:
                    async for line in resp.content:
                        if line.startswith(b"event: "):
                            if line.startswith(b"event: submitted"):
                                connected += 1
                                if connected == clients:
                                    all_connected.set()
                            elif line.startswith(b"event: progress"):
                                received[n] += 1
                            elif line.startswith(b"event: end"):
                                return

            tasks = [asyncio.create_task(client(n)) for n in range(clients)]
            await asyncio.wait_for(all_connected.wait(), 600)
            await asyncio.sleep(1)
            after = rss_kib(proc.pid)
            claims = [await session.claim() for _ in jobs]
            started = time.perf_counter()
            for pct in range(1, progress + 1):
                for claimed in claims:
                    assert claimed is not None
                    await queue.progress(claimed.job.id, claimed.token, pct)
            want = clients * progress
            while sum(received) < want:  # noqa: ASYNC110 - polling the counters is the measurement
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            for claimed in claims:
                assert claimed is not None
                await queue.complete(claimed.job.id, claimed.token, {})
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        await session.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        await queue.close()
    return {
        "clients": clients,
        "jobs": job_count,
        "events_per_job": progress,
        "deliveries": clients * progress,
        "deliveries_per_s": clients * progress / elapsed,
        "rss_per_client_kib": (after - before) / clients,
    }


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    jobs, seconds, rounds = (2000, 1, 2) if args.quick else (10000, 3, 3)
    rounds = args.rounds or rounds
    clients = 200 if args.quick else 1000
    use_wrk = _wrk.available() and not args.python_client
    if not use_wrk and not args.no_submit:
        why = "--python-client" if args.python_client else "wrk is not installed"
        print(
            f"{why}: the HTTP cells' client is this Python process (aiohttp), whose CPU per request is about half "
            "the API's and shares the cores with it",
            file=sys.stderr,
        )
    with private_redis() as server:
        submit = (
            None
            if args.no_submit
            else await submit_part(server.url, jobs, seconds, rounds, args.compare, use_wrk)
        )
        fanout = None if args.no_fanout else await fanout_part(server.url, clients, job_count=10, progress=20)
    if args.json:
        print(json.dumps({"submit": submit, "fanout": fanout, "machine": machine_line()}, indent=2))
        return
    print(machine_line())
    if submit is not None:
        http = (
            f"HTTP cells: wrk, {seconds} s each, {CONCURRENCY} keep-alive connections"
            if use_wrk
            else f"HTTP cells: {jobs} jobs each by {CONCURRENCY} Python (aiohttp) client tasks"
        )
        print(f"direct: {jobs} jobs by {CONCURRENCY} tasks of this process; {http}; {rounds} rounds")
        print_submit(submit)
    if fanout is not None:
        print_fanout(fanout)


def print_submit(submit: dict[str, Any]) -> None:
    print(
        table(
            [
                "cell",
                "jobs/s",
                "p50 ms",
                "p99 ms",
                "x direct",
                "p50 x",
                "p99 x",
                "API µs",
                "Redis µs",
                "client µs",
            ],
            [
                [
                    r["cell"],
                    r["jobs_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["ratio"],
                    r["p50_ratio"],
                    r["p99_ratio"],
                    r["api_us"],
                    r["redis_us"],
                    r["client_us"],
                ]
                for r in submit["rows"]
            ],
        )
    )


def print_fanout(fanout: dict[str, Any]) -> None:
    print()
    print(
        table(
            ["SSE clients", "jobs", "events/job", "deliveries/s", "RSS per client (KiB)"],
            [
                [
                    fanout["clients"],
                    fanout["jobs"],
                    fanout["events_per_job"],
                    fanout["deliveries_per_s"],
                    fanout["rss_per_client_kib"],
                ]
            ],
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, 1 s per HTTP cell, 200 SSE clients")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 2)")
    parser.add_argument(
        "--compare",
        type=Path,
        help="another checkout with api.processes (e.g. the previous release): its API adds the cells "
        "`before x1` and `before x2`",
    )
    parser.add_argument(
        "--python-client",
        action="store_true",
        help="POST from this process (aiohttp) instead of wrk (what runs when wrk is not installed)",
    )
    parser.add_argument("--no-fanout", action="store_true", help="part 1 only")
    parser.add_argument("--no-submit", action="store_true", help="part 2 only")
    parser.add_argument("--json", action="store_true")
    asyncio.run(main(parser.parse_args()))
