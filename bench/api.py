"""The HTTP job API: `POST /v1/jobs` against direct `Queue.submit` in the same run, and SSE fan-out.

Part 1 (submit): the same number of jobs, the same client concurrency, submitted three ways in interleaved rounds:
`Queue.submit` from this process (the baseline), over HTTP to one `appliance api` process, and over HTTP spread
over two. Each cell reports jobs/s and the p50/p99 latency of one submit; the ratio is the HTTP rate over the
direct rate of the same round (medians over rounds).

Part 2 (fan-out): 1,000 SSE clients (`GET /v1/jobs/{id}/events`) on one API process, spread over 10 jobs; a worker
then reports progress on each job; events delivered per second (all clients, first progress to last delivery)
and the API process's resident memory per connected client (RSS after connecting minus before, over clients).

Run as `python bench/api.py [--quick] [--json]`. Everything (Redis, API processes, clients) shares this machine.
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
from typing import Any

import _common  # noqa: F401 - puts the checkout on sys.path
import aiohttp
from _common import machine_line, percentile, private_redis, table

from appliance.api.keys import KeyStore, Scope
from appliance.queue import Capabilities, Queue, WorkerSession


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        APPLIANCE_REDIS_URL=redis_url, APPLIANCE_LOGGING__LEVEL="WARNING", PYTHONPATH=str(_common.ROOT)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "api", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(1200):
        try:
            async with http.get(base + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{base} did not get ready")


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


async def submit_part(redis_url: str, jobs: int, rounds: int, concurrency: int) -> dict[str, Any]:
    queue = await Queue.connect(redis_url)
    _, token = await KeyStore(queue.client, queue.keys).create(
        "bench", [Scope.SUBMIT], rate_per_s=100_000, max_in_flight=100_000
    )
    procs = [start_api(redis_url) for _ in range(2)]
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=0)
    cells: dict[str, list[tuple[float, list[float]]]] = {"direct": [], "api x1": [], "api x2": []}
    ratios: dict[str, list[float]] = {"api x1": [], "api x2": []}
    try:
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
            for _, base in procs:
                await wait_ready(http, base)

            async def direct(i: int) -> None:
                await queue.submit({"service": "echo", "payload": {"i": i}, "customer_id": "bench"})

            def over_http(bases: list[str]) -> Any:
                async def post(i: int) -> None:
                    async with http.post(
                        bases[i % len(bases)] + "/v1/jobs", json={"service": "echo", "payload": {"i": i}}
                    ) as resp:
                        if resp.status != 202:
                            raise SystemExit(f"submit answered {resp.status}: {await resp.text()}")

                return post

            await run_cell(over_http([b for _, b in procs]), min(200, jobs), concurrency)  # warm-up
            for _ in range(rounds):
                base_rate, lat = await run_cell(direct, jobs, concurrency)
                cells["direct"].append((base_rate, lat))
                for name, bases in (("api x1", [procs[0][1]]), ("api x2", [b for _, b in procs])):
                    rate, lat = await run_cell(over_http(bases), jobs, concurrency)
                    cells[name].append((rate, lat))
                    ratios[name].append(rate / base_rate)
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        await queue.close()
    rows = []
    for name, runs in cells.items():
        rows.append(
            {
                "cell": name,
                "jobs_per_s": statistics.median(r for r, _ in runs),
                "p50_ms": statistics.median(percentile(lat, 50) for _, lat in runs),
                "p99_ms": statistics.median(percentile(lat, 99) for _, lat in runs),
                "ratio": statistics.median(ratios[name]) if name in ratios else 1.0,
            }
        )
    return {"jobs": jobs, "rounds": rounds, "concurrency": concurrency, "rows": rows}


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
    jobs, rounds = (400, 2) if args.quick else (2000, 3)
    clients = 200 if args.quick else 1000
    with private_redis() as server:
        submit = await submit_part(server.url, jobs, rounds, concurrency=32)
        fanout = await fanout_part(server.url, clients, job_count=10, progress=20)
    if args.json:
        print(json.dumps({"submit": submit, "fanout": fanout, "machine": machine_line()}, indent=2))
        return
    print(f"{machine_line()}; {jobs} jobs per cell, {rounds} rounds, 32 concurrent clients")
    print(
        table(
            ["cell", "jobs/s", "p50 ms", "p99 ms", "x direct"],
            [[r["cell"], r["jobs_per_s"], r["p50_ms"], r["p99_ms"], r["ratio"]] for r in submit["rows"]],
        )
    )
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
    parser.add_argument("--quick", action="store_true", help="fewer jobs and 200 SSE clients")
    parser.add_argument("--json", action="store_true")
    asyncio.run(main(parser.parse_args()))
