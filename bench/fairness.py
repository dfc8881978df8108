"""Fair share across customers: who gets the claims, and what fairness costs the server.

    python bench/fairness.py [--quick]

1. Shares. 8 worker tasks claim and complete no-op jobs (one job per claim, one Queue client, slack 0) while
   customer A submits 10,000 jobs and then customer B submits 100. From the queue's event stream (server order)
   it prints: how many claims went to others between B's first submission and B's first claim (one claim round
   = 8), B's share of the claims while both had work (from B's first submission to B's last claim), and Jain's
   fairness index over the weighted shares. Once with equal weights, once with A:B = 3:1.
2. Cost. Server time per claim.lua and per submit.lua call (INFO commandstats usec_per_call) with the waiting
   jobs spread over 1, 10, 100 and 1,000 customers, as a ratio to the 1-customer figure of the same round;
   medians over interleaved rounds.

Not a test: it prints figures and ratios, and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

import redis.asyncio as aioredis
from _common import command_cost, machine_line, private_redis, table

from appliance.config.queue import ScriptsMode
from appliance.queue import Queue, QueueSettings

WORKERS = 8


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else float("nan")


async def _worker(queue: Queue, name: str, shape: str, last: str, stop: asyncio.Event) -> None:
    """Claim and complete until the job `last` was claimed (by any worker)."""
    while not stop.is_set():
        claimed = await queue.claim(name, [shape])
        if claimed is None:
            await asyncio.sleep(0.001)
            continue
        if claimed.job.id == last:
            stop.set()
        await queue.complete(claimed.job.id, claimed.token, None)


async def shares(url: str, a_jobs: int, b_jobs: int, weight_a: float) -> dict[str, Any]:
    settings = QueueSettings(claim_slack_ms=0, scripts=ScriptsMode.EVAL)
    queue = await Queue.connect(url, settings=settings, max_connections=WORKERS + 4)
    try:
        await queue.client.flushdb()
        await queue.limits.set("a", weight=weight_a)
        # Every no-op job has one shape; submit one first so the workers know it.
        shape = (await queue.submit({"id": "warm", "service": "echo", "customer_id": "a"})).shape
        stop = asyncio.Event()
        last = f"b-{b_jobs - 1}"
        workers = [asyncio.create_task(_worker(queue, f"w{i}", shape, last, stop)) for i in range(WORKERS)]
        for start in range(0, a_jobs, 500):
            batch = range(start, min(a_jobs, start + 500))
            await queue.submit_many([{"id": f"a-{i}", "service": "echo", "customer_id": "a"} for i in batch])
        await queue.submit_many(
            [{"id": f"b-{i}", "service": "echo", "customer_id": "b"} for i in range(b_jobs)]
        )
        await asyncio.gather(*workers)
        events = [
            (e.entry_id, e.fields) for e in await queue.events.window(0, 10**9)
        ]  # a batch's entry: its events
    finally:
        await queue.close()
    window: list[str] = []
    opened, first_b_at = False, None
    for _, fields in events:
        job = fields["job"].strip('"')
        if fields["event"] == "submitted" and job == "b-0":
            opened = True
        elif fields["event"] == "claimed" and opened:
            window.append(job)
            if job.startswith("b-") and first_b_at is None:
                first_b_at = len(window) - 1
            if job == f"b-{b_jobs - 1}":
                break
    b = sum(1 for j in window if j.startswith("b-"))
    a = len(window) - b
    return {
        "before_b": first_b_at,
        "b_share": b / len(window),
        "jain": jain([a / weight_a, b / 1.0]),
        "a_left": a_jobs
        - sum(1 for _, f in events if f["event"] == "claimed" and f["job"].strip('"').startswith("a-")),
    }


async def cost_round(url: str, customers: int, jobs: int, claims: int) -> tuple[float, float]:
    """(usec per submit.lua call, usec per claim.lua call) with `jobs` waiting over `customers` customers."""
    settings = QueueSettings(claim_slack_ms=0, scripts=ScriptsMode.EVAL)
    queue = await Queue.connect(url, settings=settings)
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await queue.client.flushdb()
        specs = [{"service": "echo", "customer_id": f"c{i % customers}"} for i in range(jobs)]
        await admin.config_resetstat()
        for start in range(0, jobs, 500):
            await queue.submit_many(specs[start : start + 500])
        _, submit_us = command_cost(await admin.info("commandstats"), "evalsha")
        shape = (await queue.submit({"service": "echo"})).shape
        await admin.config_resetstat()
        for _ in range(claims):
            await queue.claim("w", [shape])
        _, claim_us = command_cost(await admin.info("commandstats"), "evalsha")
        return submit_us, claim_us
    finally:
        await admin.aclose()
        await queue.close()


async def main(quick: bool) -> None:
    print(machine_line())
    with private_redis("--save", "", "--appendonly", "no") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        a_jobs = 2_000 if quick else 10_000
        rows = []
        for label, weight_a in (("equal weights", 1.0), ("A:B = 3:1", 3.0)):
            r = await shares(url, a_jobs, 100, weight_a)
            target = "≥ 45 %" if weight_a == 1 else "25 % ± 5"
            rows.append(
                [label, r["before_b"], f"{100 * r['b_share']:.1f} %", target, f"{r['jain']:.3f}", r["a_left"]]
            )
        print(f"\n{WORKERS} workers; A submits {a_jobs:,} no-op jobs, then B submits 100 (slack 0)\n")
        print(
            table(
                [
                    "weights",
                    "claims before B's first",
                    "B's share while both wait",
                    "target",
                    "Jain",
                    "A left",
                ],
                rows,
            )
        )
        counts = (1, 10, 100, 1000)
        rounds = 3 if quick else 5
        jobs, claims = (5_000, 500) if quick else (20_000, 2_000)
        submit: dict[int, list[float]] = {c: [] for c in counts}
        claim: dict[int, list[float]] = {c: [] for c in counts}
        for _ in range(rounds):
            for c in counts:  # interleaved: every round measures every count once
                s, k = await cost_round(url, c, jobs, claims)
                submit[c].append(s)
                claim[c].append(k)
        base_s, base_c = statistics.median(submit[1]), statistics.median(claim[1])
        cost_rows = []
        for c in counts:
            ms, mc = statistics.median(submit[c]), statistics.median(claim[c])
            cost_rows.append([c, ms, f"{ms / base_s:.2f}", mc, f"{mc / base_c:.2f}"])
        print(f"\nServer time per call, {jobs:,} waiting jobs, medians of {rounds} interleaved rounds\n")
        print(
            table(
                ["customers", "submit.lua µs", "× 1 customer", "claim.lua µs", "× 1 customer"],
                cost_rows,
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (2,000 jobs; 3 rounds)")
    asyncio.run(main(parser.parse_args().quick))
