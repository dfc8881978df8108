"""One queue on a standalone Redis vs the same queue on a 3-node Redis Cluster, and durable acknowledgement.

    python bench/cluster.py [--quick]

Every configuration runs the queue's own client (appliance.queue.factory.connect_queue, as the processes do):
one submitter enqueues N jobs with `submit_many`, then W consumer tasks drain them with `finish_and_claim`
(complete the previous batch and claim the next, as the worker's claim loop does), C jobs per claim. Measured:
jobs per second for the submits and for claim+complete, and Redis CPU per job (INFO cpu, user + system, summed
over every node of the deployment: a Cluster's bus traffic counts).

Configurations, interleaved round by round on the same servers (the medians of the rounds are printed):
- standalone: one redis-server;
- cluster: three primaries, the queue's slot on one of them; the client follows redirections (a call goes to the
  queue's primary directly once the slot map is known, and a completion and a claim are two round trips:
  a Cluster client does not pipeline scripts);
- replicated: a primary with one replica, `queue.durable_replicas = 0` (the baseline of the next);
- durable: the same pair with `queue.durable_replicas = 1`: every submit batch and completion waits for WAIT.
Ratios against standalone (and durable against replicated) measured in the same run are the figures to quote.

Part 2 (`--workers P`, default 2; 0 skips it) runs the product as users run it on each deployment: P real
`appliance worker --connector echo` processes with default settings except where Redis is (`APPLIANCE_REDIS__*`)
and durability, registered first; then the jobs are submitted with `submit_many` and the clock runs until the
queue's own `completed` count reaches them. End-to-end jobs/s and Redis CPU per job (submit, claim, complete,
events and heartbeats: everything the deployment did meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import redis
from _common import machine_line, stop_process_groups, table

from appliance.config import Settings
from appliance.localredis import LocalRedis, free_port
from appliance.queue import Queue
from appliance.queue.factory import connect_queue

QUEUE = "bench"


def start_cluster() -> list[LocalRedis]:
    nodes = [
        LocalRedis(
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            + ["--cluster-port", str(free_port()), "--cluster-node-timeout", "5000"]
        ).start()
        for _ in range(3)
    ]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)]
        + ["--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    while any(
        "cluster_state:ok" not in str(redis.Redis(port=n.port).execute_command("CLUSTER", "INFO"))
        for n in nodes
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not come up")
        time.sleep(0.1)
    return nodes


def start_replicated() -> tuple[LocalRedis, LocalRedis]:
    primary = LocalRedis(extra_args=["--repl-diskless-sync-delay", "0"]).start()
    replica = LocalRedis(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    deadline = time.monotonic() + 30
    while (
        redis.Redis(port=replica.port, decode_responses=True).info("replication").get("master_link_status")
        != "up"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not sync")
        time.sleep(0.1)
    return primary, replica


def cpu_s(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        info = redis.Redis(port=port).info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


async def one_round(
    settings: Settings, ports: list[int], jobs: int, consumers: int, batch: int
) -> dict[str, float]:
    queue = await connect_queue(settings)
    try:
        specs = [{"service": "echo", "payload": {"i": i}} for i in range(jobs)]
        cpu0, t0 = cpu_s(ports), time.perf_counter()
        submitted = await queue.submit_many(specs)
        t1, cpu1 = time.perf_counter(), cpu_s(ports)
        shape = submitted[0].shape
        await asyncio.gather(*(consume(queue, f"w{i}", shape, batch) for i in range(consumers)))
        t2, cpu2 = time.perf_counter(), cpu_s(ports)
        done = (await queue.stats()).totals.get("completed", 0)
        if done < jobs:
            raise RuntimeError(f"only {done} of {jobs} jobs completed")
        return {
            "submit_jobs_s": jobs / (t1 - t0),
            "cycle_jobs_s": jobs / (t2 - t1),
            "submit_cpu_us": (cpu1 - cpu0) / jobs * 1e6,
            "cycle_cpu_us": (cpu2 - cpu1) / jobs * 1e6,
        }
    finally:
        if not queue.cluster:
            await queue.client.flushall()
        await queue.close()


async def consume(queue: Queue, worker: str, shape: str, batch: int) -> None:
    outcomes: list[Any] = []
    while True:
        _, claimed = await queue.finish_and_claim(outcomes, worker, [shape], batch)
        if not claimed:
            return
        outcomes = [(c.job.id, c.token, {"ok": True}) for c in claimed]


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker process on the deployment `settings` describe (nothing else changed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        {
            "APPLIANCE_REDIS__URL": settings.redis.url,
            "APPLIANCE_REDIS__MODE": settings.redis.mode.value,
            "APPLIANCE_REDIS__QUEUE": QUEUE,
            "APPLIANCE_QUEUE__DURABLE_REPLICAS": str(settings.queue.durable_replicas),
            "APPLIANCE_MACHINE__ID": "bench",
        }
    )
    return env


def worker_round(settings: Settings, ports: list[int], jobs: int, processes: int) -> dict[str, float]:
    """P real `appliance worker` processes drain `jobs` echo jobs; done is the queue's own completed count."""
    logs = tempfile.mkdtemp(prefix="bench-cluster-")
    workers = []
    for i in range(processes):
        with open(os.path.join(logs, f"worker{i}.log"), "wb") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "appliance", "worker", "--connector", "echo", "--index", str(i)],
                    env=worker_env(settings),
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
            )
    try:
        return asyncio.run(measure_workers(settings, ports, jobs, workers, logs))
    finally:
        stop_process_groups(workers, grace_s=15)
        if settings.redis.mode.value != "cluster":  # the Cluster is flushed node by node by the caller
            redis.Redis.from_url(settings.redis.url).flushall()


async def measure_workers(
    settings: Settings, ports: list[int], jobs: int, workers: list[subprocess.Popen[bytes]], logs: str
) -> dict[str, float]:
    queue = await connect_queue(settings)
    try:
        deadline = time.monotonic() + 60
        while (await queue.stats()).workers < len(workers):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError(f"workers did not register (logs in {logs})")
            await asyncio.sleep(0.1)
        before = (await queue.stats()).totals.get("completed", 0)
        cpu0, t0 = cpu_s(ports), time.perf_counter()
        for start in range(0, jobs, 1_000):
            await queue.submit_many(
                [{"service": "echo", "payload": {}} for _ in range(start, min(jobs, start + 1_000))]
            )
        while (await queue.stats()).totals.get("completed", 0) - before < jobs:
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"workers did not finish the jobs (logs in {logs})")
            await asyncio.sleep(0.02)
        t1, cpu1 = time.perf_counter(), cpu_s(ports)
        return {"jobs_s": jobs / (t1 - t0), "cpu_us": (cpu1 - cpu0) / jobs * 1e6}
    finally:
        await queue.close()


def flush_cluster(nodes: list[LocalRedis]) -> None:
    for node in nodes:
        redis.Redis(port=node.port).flushall()


def configurations(
    standalone: LocalRedis, cluster: list[LocalRedis], primary: LocalRedis, replica: LocalRedis
) -> dict[str, tuple[Settings, list[int], Callable[[], None]]]:
    def settings(redis_section: dict[str, Any], durable: int = 0) -> Settings:
        return Settings.model_validate(
            {
                "redis": {**redis_section, "queue": QUEUE},
                "queue": {"durable_replicas": durable, "events": "stream"},
            }
        )

    nothing: Callable[[], None] = lambda: None  # noqa: E731 - the standalone rounds flush through their client
    return {
        "standalone": (settings({"url": standalone.url}), [standalone.port], nothing),
        "cluster": (
            settings({"url": f"redis://127.0.0.1:{cluster[0].port}", "mode": "cluster"}),
            [n.port for n in cluster],
            lambda: flush_cluster(cluster),
        ),
        "replicated": (settings({"url": primary.url}), [primary.port, replica.port], nothing),
        "durable": (settings({"url": primary.url}, durable=1), [primary.port, replica.port], nothing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer jobs and rounds")
    parser.add_argument("--jobs", type=int, help="jobs per round (default 3000, --quick 600)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 2)")
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="jobs per claim")
    parser.add_argument("--workers", type=int, default=2, help="part 2: appliance worker processes (0: skip)")
    args = parser.parse_args()
    jobs = args.jobs or (600 if args.quick else 3000)
    rounds = args.rounds or (2 if args.quick else 5)
    standalone = LocalRedis().start()
    cluster = start_cluster()
    primary, replica = start_replicated()
    try:
        configs = configurations(standalone, cluster, primary, replica)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        product: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        for r in range(rounds):
            for name, (settings, ports, flush) in configs.items():
                results[name].append(
                    asyncio.run(one_round(settings, ports, jobs, args.consumers, args.batch))
                )
                flush()
                if args.workers:
                    product[name].append(worker_round(settings, ports, jobs, args.workers))
                    flush()
            print(f"round {r + 1}/{rounds} done", flush=True)
    finally:
        for server in [standalone, *cluster, primary, replica]:
            server.cleanup()
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items() if rs
    }
    base = med["standalone"]
    rows = []
    for name, m in med.items():
        ref = med["replicated"] if name == "durable" else base
        rows.append(
            [
                name,
                f"{m['submit_jobs_s']:.0f}",
                f"{m['cycle_jobs_s']:.0f} ({m['cycle_jobs_s'] / ref['cycle_jobs_s']:.2f}x)",
                f"{m['submit_cpu_us']:.0f}",
                f"{m['cycle_cpu_us']:.0f} ({m['cycle_cpu_us'] / ref['cycle_cpu_us']:.2f}x)",
            ]
        )
    print(machine_line())
    print(
        f"{jobs} jobs per round, {rounds} rounds (medians), {args.consumers} consumers, {args.batch} per claim"
    )
    print("ratios: against standalone; durable against replicated (same primary + replica, WAIT off)")
    print(
        table(
            ["deployment", "submit jobs/s", "claim+complete jobs/s", "Redis CPU µs/job (submit)",
             "Redis CPU µs/job (claim+complete)"],
            rows,
        )
    )  # fmt: skip
    if args.workers:
        print_product(product, jobs, args.workers)


def print_product(product: dict[str, list[dict[str, float]]], jobs: int, processes: int) -> None:
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in product.items() if rs
    }
    rows = []
    for name, m in med.items():
        ref = med["replicated"] if name == "durable" else med["standalone"]
        rows.append(
            [
                name,
                f"{m['jobs_s']:.0f} ({m['jobs_s'] / ref['jobs_s']:.2f}x)",
                f"{m['cpu_us']:.0f} ({m['cpu_us'] / ref['cpu_us']:.2f}x)",
            ]
        )
    print(
        f"\nthrough the product: {processes} `appliance worker --connector echo` processes, default settings,"
    )
    print(
        f"{jobs} jobs per round submitted with submit_many once the workers registered; done = queue's completed"
    )
    print(table(["deployment", "end-to-end jobs/s", "Redis CPU µs/job (all of it)"], rows))


if __name__ == "__main__":
    main()
