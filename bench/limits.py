"""Per-customer limits: do they hold under racing workers, and what do they cost the server.

    python bench/limits.py [--quick]

1. Limits hold under 8 workers racing. 8 `appliance worker --connector echo` processes (default settings) work
   one queue: customer A (cap 4 jobs in flight, fleet-wide) and B (no limit) submit 20 ms echo jobs, customer C
   (50 starts/s, burst 10) no-op jobs, A's first. From the queue's event stream (entry ids carry the server's
   clock) it prints A's most jobs in flight at once, C's most starts in any 1 s window, and how many of B's jobs
   were claimed while A sat at its cap (a capped customer must not block the others).
2. Cost (a component figure: queue-client claims, not worker processes). Server time per claim.lua and per
   complete.lua call (INFO commandstats usec_per_call) with limits off, with a cap on every customer, and with a
   cap and a rate on every customer, none of which binds (the same jobs are claimed: only the checks and the
   in-flight accounting differ); medians of interleaved rounds, as a ratio to "off" of the same run.

Not a test: it prints figures and ratios, and asserts nothing about time.
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
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from _common import ROOT, command_cost, machine_line, private_redis, stop_process_groups, table

from appliance.config.queue import ScriptsMode
from appliance.queue import Queue, QueueSettings

WORKERS = 8
CAP, RATE, BURST = 4, 50.0, 10.0
ENDS = {"completed", "failed", "dead", "released", "lease_expired", "cancelled"}


def start_workers(url: str, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    procs = []
    for i in range(WORKERS):
        command = [sys.executable, "-m", "appliance", "worker", "--connector", "echo", "--index", str(i)]
        with open(logs / f"worker-{i}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [*command, "--redis-url", url],
                    env=env,
                    cwd=logs,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
            )
    return procs


async def racing(url: str, a_jobs: int, b_jobs: int, c_jobs: int) -> dict[str, Any]:
    queue = await Queue.connect(url)
    try:
        await queue.client.flushdb()
        await queue.limits.set("a", max_in_flight=CAP)
        await queue.limits.set("c", rate=RATE, burst=BURST)
        slow = {"service": "echo", "payload": {"delay": 0.02}}
        owner: dict[str, str] = {}
        for customer, n, spec in (
            ("a", a_jobs, slow),
            ("b", b_jobs, slow),
            ("c", c_jobs, {"service": "echo"}),
        ):
            for start in range(0, n, 500):
                specs = [{**spec, "customer_id": customer} for _ in range(start, min(n, start + 500))]
                owner.update({j.id: customer for j in await queue.submit_many(specs)})
        with tempfile.TemporaryDirectory(prefix="bench-limits-") as logs:
            procs = start_workers(url, Path(logs))
            began = time.monotonic()
            try:
                while (await queue.stats()).totals.get("completed", 0) < len(owner):
                    if time.monotonic() - began > 300 or any(p.poll() is not None for p in procs):
                        break
                    await asyncio.sleep(0.2)
            finally:
                stop_process_groups(procs)
        entries = [
            (e.entry_id, e.fields) for e in await queue.events.window(0, 10**9)
        ]  # a batch's entry: its events
        completed = (await queue.stats()).totals.get("completed", 0)
    finally:
        await queue.close()
    now: Counter[str] = Counter()
    a_peak, b_while_capped, starts = 0, 0, []
    for entry_id, fields in entries:
        customer = owner.get(str(fields.get("job", "")).strip('"'))
        if customer is None:
            continue
        if fields["event"] == "claimed":
            now[customer] += 1
            a_peak = max(a_peak, now["a"])
            b_while_capped += customer == "b" and now["a"] >= CAP
            if customer == "c":
                starts.append(int(str(entry_id).split("-")[0]))
        elif fields["event"] in ENDS:
            now[customer] -= 1
    window = max((sum(1 for s in starts[i:] if s <= t + 1000) for i, t in enumerate(starts)), default=0)
    return {
        "a_peak": a_peak,
        "c_window": window,
        "b_capped": b_while_capped,
        "done": completed,
        "of": len(owner),
    }


MODES = ("off", "cap", "cap+rate")


async def cost_round(url: str, mode: str, jobs: int, customers: int) -> tuple[float, float]:
    """(usec per claim.lua call, usec per complete.lua call), one job per claim."""
    settings = QueueSettings(claim_slack_ms=0, scripts=ScriptsMode.EVAL)
    queue = await Queue.connect(url, settings=settings)
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await queue.client.flushdb()
        for i in range(customers if mode != "off" else 0):  # limits that never bind: checks and charges only
            rate = {"rate": 1e6, "burst": 1e6} if mode == "cap+rate" else {}
            await queue.limits.set(f"c{i}", max_in_flight=10**6, **rate)
        specs = [{"service": "echo", "customer_id": f"c{i % customers}"} for i in range(jobs)]
        for start in range(0, jobs, 500):
            await queue.submit_many(specs[start : start + 500])
        shape = (await queue.submit({"service": "echo"})).shape
        await admin.config_resetstat()
        claimed = [await queue.claim("w", [shape]) for _ in range(jobs)]
        _, claim_us = command_cost(await admin.info("commandstats"), "evalsha")
        await admin.config_resetstat()
        for c in claimed:
            if c is not None:
                await queue.complete(c.job.id, c.token, None)
        _, complete_us = command_cost(await admin.info("commandstats"), "evalsha")
        return claim_us, complete_us
    finally:
        await admin.aclose()
        await queue.close()


async def main(quick: bool) -> None:
    print(machine_line())
    print(f"load: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    with private_redis("--save", "", "--appendonly", "no") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        a, b, c = (200, 100, 150) if quick else (600, 300, 400)
        r = await racing(url, a, b, c)
        print(
            f"\n{WORKERS} `appliance worker` processes; A {a} jobs of 20 ms (cap {CAP}), B {b} (no limit), "
        )
        print(f"C {c} no-op jobs ({RATE:g}/s, burst {BURST:g}); {r['done']:,} of {r['of']:,} completed\n")
        print(
            table(
                ["limit", "target", "observed", "holds"],
                [
                    [
                        f"A in flight (cap {CAP})",
                        f"<= {CAP}",
                        r["a_peak"],
                        "yes" if r["a_peak"] <= CAP else "NO",
                    ],
                    [
                        f"C starts in any 1 s ({RATE:g}/s, burst {BURST:g})",
                        f"<= {RATE + BURST:g}",
                        r["c_window"],
                        "yes" if r["c_window"] <= RATE + BURST else "NO",
                    ],
                    [
                        "B claims while A sat at its cap",
                        "> 0",
                        r["b_capped"],
                        "yes" if r["b_capped"] else "NO",
                    ],
                ],
            )
        )
        rounds = 3 if quick else 5
        jobs, customers = (1_000, 100) if quick else (3_000, 100)
        cells: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        for _ in range(rounds):
            for mode in MODES:  # interleaved
                cells[mode].append(await cost_round(url, mode, jobs, customers))
        off_c = statistics.median(x[0] for x in cells["off"])
        off_d = statistics.median(x[1] for x in cells["off"])
        rows = []
        for mode in MODES:
            mc = statistics.median(x[0] for x in cells[mode])
            md = statistics.median(x[1] for x in cells[mode])
            rows.append([mode, mc, f"{mc / off_c:.2f}", md, f"{md / off_d:.2f}"])
        print(
            f"\nServer time per call (component: queue-client claims, one job each), {jobs:,} jobs over "
            f"{customers} customers, medians of {rounds} interleaved rounds\n"
        )
        print(table(["limits", "claim.lua µs", "× off", "complete.lua µs", "× off"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run")
    asyncio.run(main(parser.parse_args().quick))
