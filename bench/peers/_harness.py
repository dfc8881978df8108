"""What every system's bench adapter shares: the no-op job's bookkeeping and the producer roles.

Runs under the system's own interpreter (the peers need redis-py < 6, so they live in a separate virtualenv), and
depends on nothing but redis-py. The orchestrator is bench/throughput.py.

A worker's job body calls `job_done(t_submit)`:
  BENCH_MODE=throughput  counts the job in process memory; a reporter thread writes `count first last` (wall-clock
                         times of the first and last job started in this process) to the hash `bench:progress`
                         every 50 ms, so the job itself costs no Redis round trip.
  BENCH_MODE=latency     RPUSHes `now - t_submit` (seconds, same machine clock) to the list `bench:lat`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import sys
import threading
import time
from typing import Any

import redis

PROGRESS_KEY = "bench:progress"
LATENCY_KEY = "bench:lat"


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.reporter: threading.Thread | None = None
        self.client: redis.Redis | None = None


_tally = _Tally()


def _client() -> redis.Redis:
    if _tally.client is None:
        _tally.client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _tally.client


def _report_forever() -> None:
    client, pid = _client(), str(os.getpid())
    while True:
        with _tally.lock:
            value = f"{_tally.count} {_tally.first} {_tally.last}"
        client.hset(PROGRESS_KEY, pid, value)
        time.sleep(0.05)


def job_done(t_submit: float) -> None:
    """The whole no-op job: bookkeeping only."""
    now = time.time()
    if os.environ.get("BENCH_MODE") == "latency":
        _client().rpush(LATENCY_KEY, now - float(t_submit))
        return
    with _tally.lock:
        _tally.count += 1
        if _tally.count == 1:
            _tally.first = now
        _tally.last = now
        if _tally.reporter is None:
            _tally.reporter = threading.Thread(target=_report_forever, daemon=True)
            _tally.reporter.start()


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def produce(system: Any, role: str, url: str, count: int, rate: float) -> None:
    """bulk: enqueue `count` jobs as fast as the system allows. paced: submit at `rate`/s, then collect the
    latencies. idle: one job at a time into idle workers, waiting for each to start. Prints a JSON line."""
    from redis import asyncio as aioredis

    os.environ["BENCH_REDIS_URL"] = url
    client = aioredis.Redis.from_url(url)
    await _maybe(system.setup(url))
    out: dict[str, Any] = {"role": role, "count": count}
    started = time.monotonic()
    if role == "bulk":
        await _maybe(system.enqueue_bulk(count))
    else:
        for _ in range(3):  # warm-up: workers up and connected before anything is timed
            await _maybe(system.enqueue_one(time.time()))
            await client.blpop(LATENCY_KEY, timeout=30)
        await client.delete(LATENCY_KEY)
        latencies: list[float] = []
        if role == "paced":
            for i in range(count):
                due = started + i / rate
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                await _maybe(system.enqueue_one(time.time()))
            deadline = time.monotonic() + 30
            while await client.llen(LATENCY_KEY) < count and time.monotonic() < deadline:  # noqa: ASYNC110 (polls Redis)
                await asyncio.sleep(0.05)
            latencies = [float(v) for v in await client.lrange(LATENCY_KEY, 0, -1)]
        else:
            for _ in range(count):
                await asyncio.sleep(random.uniform(0.02, 0.05))  # let every worker go back to waiting
                await _maybe(system.enqueue_one(time.time()))
                got = await client.blpop(LATENCY_KEY, timeout=10)
                if got:
                    latencies.append(float(got[1]))
        out["latencies_ms"] = [v * 1000 for v in latencies]
    out["seconds"] = time.monotonic() - started
    await _maybe(system.teardown())
    await client.aclose()
    print(json.dumps(out), flush=True)


def main(system: Any) -> None:
    """`<adapter> produce ROLE URL COUNT RATE` or `<adapter> worker URL CONCURRENCY`."""
    role = sys.argv[1]
    if role == "produce":
        asyncio.run(produce(system, sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    elif role == "worker":
        os.environ["BENCH_REDIS_URL"] = sys.argv[2]
        system.run_worker(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown role {role!r}")
