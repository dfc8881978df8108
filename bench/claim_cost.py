"""Server-side cost of the queue scripts, as Redis itself accounts it (INFO commandstats usec_per_call).

    python bench/claim_cost.py [--quick]

Baseline: redis-benchmark running EVALSHA of a no-op script (`return 1`), and FCALL of a no-op function, on the
same server in the same run. Then the real claim script (through appliance.queue.Queue.claim, as FCALL and as the
EVALSHA fallback) over a grid of waiting jobs x shapes per worker, and the submit / complete / heartbeat scripts.

Large queues are filled by a bulk Lua loader that writes exactly what submit.lua writes (spec, meta and state
columns, the shape's ready index, heads, the shape registry); a few jobs per cell are checked by claiming them
through the real client. Only the claims are measured; the loader runs before CONFIG RESETSTAT.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from typing import Any

from _common import NOOP_LIBRARY, NOOP_LUA, command_cost, machine_line, private_redis, redis_benchmark, table

from appliance.queue import EventsMode, JobSpec, Queue, QueueSettings, Requirements
from appliance.queue.scripts import ScriptSet

#: Fills one shape's ready index with `count` jobs per call. Mirrors submit.lua's writes (see its header).
LOADER = r"""
local spec_key, meta_key, state_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local heads_key, shapes_key, counts_key = KEYS[5], KEYS[6], KEYS[7]
local prefix, first, count, template = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local shape, shape_json, service, now = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local specs, metas, states, ready = {}, {}, {}, {}
local best = nil
for i = first, first + count - 1 do
  local id = prefix .. string.format('%024d', i)
  local score = string.format('%.0f', now * 1000 + i)
  best = best or score
  local body = string.gsub(template, 'BENCHIDPLACEHOLDER', id)
  specs[#specs + 1] = id; specs[#specs + 1] = body
  metas[#metas + 1] = id
  metas[#metas + 1] = shape .. '|' .. service .. '|' .. now .. '|0|3|0|' .. score
  states[#states + 1] = id; states[#states + 1] = 'pending'
  ready[#ready + 1] = score; ready[#ready + 1] = id
  if #ready >= 2000 then
    redis.call('HSET', spec_key, unpack(specs)); redis.call('HSET', meta_key, unpack(metas))
    redis.call('HSET', state_key, unpack(states)); redis.call('ZADD', ready_key, unpack(ready))
    specs, metas, states, ready = {}, {}, {}, {}
  end
end
if #ready > 0 then
  redis.call('HSET', spec_key, unpack(specs)); redis.call('HSET', meta_key, unpack(metas))
  redis.call('HSET', state_key, unpack(states)); redis.call('ZADD', ready_key, unpack(ready))
end
redis.call('ZADD', heads_key, 'LT', best, shape)
redis.call('HSETNX', shapes_key, shape, shape_json)
redis.call('HINCRBY', counts_key, 'submitted', count)
return count
"""

#: The least any at-least-once claim must do (pop, lease, owner, read the job): a yardstick for the real
#: script's extra work (heads upkeep, state, attempts, events), measured on the same data.
MINIMAL_LEASE = r"""
local popped = redis.call('ZPOPMIN', KEYS[1])
local id = popped[1]
if not id then return nil end
redis.call('ZADD', KEYS[2], 1, id)
redis.call('HSET', KEYS[3], id, ARGV[1])
return {id, redis.call('HGET', KEYS[4], id)}
"""

LOAD_BATCH = 20_000
#: redis-benchmark connections: enough to keep the server busy, like the no-op baseline.
BENCH_CLIENTS = 50


def shape_specs(nshapes: int) -> list[JobSpec]:
    """One small job per shape: service `bench`, shape told apart by a tag."""
    return [
        JobSpec(
            id="BENCHIDPLACEHOLDER",
            service="bench",
            payload={"n": 1},
            requirements=Requirements(tags=[f"s{i}"]),
        )
        for i in range(nshapes)
    ]


class Filler:
    """Keeps `nshapes` shapes topped up to a target depth with the bulk loader (ids never repeat)."""

    def __init__(self, queue: Queue, nshapes: int) -> None:
        self.queue = queue
        self.loader = queue.client.register_script(LOADER)
        self.calls = [queue._submit_call(spec) for spec in shape_specs(nshapes)]
        # The client's own submit arguments give the exact JSON body, shape id and shape record it would write.
        self.shapes: list[str] = [args[2] for _, _, args in self.calls]
        self.next_index = [0] * nshapes

    async def top_up(self, total: int) -> None:
        """Make the shapes hold `total` waiting jobs between them (spread evenly)."""
        k = self.queue.keys
        per_shape = max(1, total // len(self.shapes))
        now = int(time.time() * 1000)
        for index, (_, _, args) in enumerate(self.calls):
            body, shape, record = args[1], args[2], args[3]
            missing = per_shape - int(await self.queue.client.zcard(k.ready(shape)))
            while missing > 0:
                count = min(LOAD_BATCH, missing)
                await self.loader(
                    keys=[k.spec, k.meta, k.state, k.ready(shape), k.heads, k.shapes, k.counts],
                    args=[f"b{index:07d}", self.next_index[index], count, body, shape, record, "bench", now],
                )
                self.next_index[index] += count
                missing -= count


async def check_fill(queue: Queue, shapes: list[str]) -> None:
    """A loaded job must come back whole through the real claim script and client."""
    claimed = await queue.claim("bench-check", shapes)
    assert claimed is not None and claimed.job.service == "bench" and claimed.job.payload == {"n": 1}, claimed
    await queue.complete(claimed.job.id, claimed.token, {})


async def stats_reset(queue: Queue) -> None:
    await queue.client.config_resetstat()


async def cost(queue: Queue, command: str) -> tuple[int, float]:
    return command_cost(await queue.client.info("commandstats"), command)


def claim_command(queue: Queue, shapes: list[str], via: str) -> list[str]:
    """The claim exactly as Queue.claim sends it (fixed worker and token), for redis-benchmark to repeat."""
    keys, claim_args = queue.claim_call("bench-w", shapes, "0123456789abcdef01234567")
    args = [str(a) for a in [*queue._common(), *claim_args]]
    if via == "FCALL":
        return ["FCALL", queue.scripts.function_name("claim"), str(len(keys)), *keys, *args]
    sha = hashlib.sha1(queue.scripts.sources["claim"].encode()).hexdigest()
    return ["EVALSHA", sha, str(len(keys)), *keys, *args]


async def claim_cell(queue: Queue, port: int, jobs: int, nshapes: int, claims: int) -> dict[str, float]:
    """usec_per_call of the claim script on a queue holding `jobs` (to `jobs + claims`) over `nshapes` shapes,
    driven three ways: redis-benchmark FCALL, redis-benchmark EVALSHA, and the Python client one at a time."""
    await queue.client.flushall()
    filler = Filler(queue, nshapes)
    await filler.top_up(jobs)
    await check_fill(queue, filler.shapes)
    await queue.client.script_load(queue.scripts.sources["claim"])
    out: dict[str, float] = {}
    k = queue.keys
    minimal = await queue.client.script_load(MINIMAL_LEASE)
    commands = {via: claim_command(queue, filler.shapes, via) for via in ("FCALL", "EVALSHA")}
    commands["minimal"] = [
        "EVALSHA",
        minimal,
        "4",
        k.ready(filler.shapes[0]),
        k.leases,
        k.owner,
        k.spec,
        "0123456789abcdef01234567|bench-w|0",
    ]
    if nshapes > 1:
        del commands["minimal"]  # the yardstick pops one shape only: meaningful for the 1-shape cells
    out["minimal"] = float("nan")
    for via, command in commands.items():
        await filler.top_up(jobs + claims)
        await stats_reset(queue)
        redis_benchmark(port, claims, *command, clients=BENCH_CLIENTS)
        calls, out[via] = await cost(queue, command[0].lower())
        assert calls == claims, (via, calls, claims)
    await filler.top_up(jobs + claims)
    await stats_reset(queue)
    got = 0
    for _ in range(claims):
        got += (await queue.claim("bench-w", filler.shapes)) is not None
    calls, out["client"] = await cost(queue, "fcall")
    assert calls == claims and got == claims, (calls, claims, got)
    return out


async def concurrently(calls: list[Any], width: int = BENCH_CLIENTS) -> list[Any]:
    """Await zero-argument coroutine factories `width` at a time (a busy server, like redis-benchmark's)."""
    out: list[Any] = []
    for start in range(0, len(calls), width):
        out += await asyncio.gather(*(call() for call in calls[start : start + width]))
    return out


async def lifecycle_costs(queue: Queue, count: int) -> dict[str, float]:
    """usec_per_call of submit, claim, heartbeat (1 and 8 leases) and complete, through the Python client with
    50 calls in flight (submit: pipelined submit_many)."""
    command = "fcall" if queue.scripts.use_functions else "evalsha"
    await queue.client.flushall()
    out: dict[str, float] = {}
    specs = [JobSpec(service="bench", payload={"n": i}) for i in range(count)]
    await stats_reset(queue)
    jobs = await queue.submit_many(specs)
    out["submit"] = (await cost(queue, command))[1]
    shapes = [jobs[0].shape]
    await stats_reset(queue)
    leased = await concurrently([lambda: queue.claim("bench-w", shapes) for _ in range(count)])
    out["claim"] = (await cost(queue, command))[1]
    for size in (1, 8):
        groups = [{c.job.id: c.token for c in leased[i : i + size]} for i in range(0, count, size)]
        await stats_reset(queue)
        await concurrently([lambda g=g: queue.heartbeat("bench-w", g, shapes) for g in groups])
        out[f"heartbeat ({size} lease{'s' if size > 1 else ''})"] = (await cost(queue, command))[1]
    await stats_reset(queue)
    await concurrently([lambda c=c: queue.complete(c.job.id, c.token, {"ok": True}) for c in leased])
    out["complete"] = (await cost(queue, command))[1]
    return out


async def connect(url: str, functions: bool, events: EventsMode = EventsMode.STREAM_AND_PUBSUB) -> Queue:
    queue = await Queue.connect(url, queue_name="bench", settings=QueueSettings(events=events))
    if not functions:
        queue.scripts = ScriptSet(use_functions=False)
        await queue.scripts.load(queue.client)
    return queue


async def run(args: argparse.Namespace) -> None:
    grid_jobs = [1_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    grid_shapes = [1, 64] if args.quick else [1, 8, 64]
    claims = 1_000 if args.quick else 3_000
    requests = 50_000 if args.quick else 200_000
    print(f"# claim_cost ({'quick' if args.quick else 'full'}) on {machine_line()}")
    with private_redis() as server:
        queue = await connect(server.url, functions=True)
        client = queue.client
        # --- baselines: a no-op script and a no-op function, driven by redis-benchmark, and the no-op script
        # through the Python client (one at a time, and 50 in flight) for the client-driven figures ---
        sha = await client.script_load(NOOP_LUA)
        await client.execute_command("FUNCTION", "LOAD", "REPLACE", NOOP_LIBRARY)
        base: dict[str, float] = {}
        for label, command in (("EVALSHA", ["EVALSHA", sha, "0"]), ("FCALL", ["FCALL", "bench_noop", "0"])):
            await client.config_resetstat()
            line = redis_benchmark(server.port, requests, *command)
            base[label] = (await cost(queue, label.lower()))[1]
            print(
                f"baseline no-op {label:7s} (redis-benchmark, 50 clients): {base[label]:.2f} usec/call  [{line}]"
            )
        await client.config_resetstat()
        for _ in range(claims):
            await client.evalsha(sha, 0)
        base["client-seq"] = (await cost(queue, "evalsha"))[1]
        await client.config_resetstat()
        await concurrently([lambda: client.evalsha(sha, 0) for _ in range(claims)])
        base["client-50"] = (await cost(queue, "evalsha"))[1]
        print(f"baseline no-op EVALSHA (Python client, one at a time): {base['client-seq']:.2f} usec/call")
        print(f"baseline no-op EVALSHA (Python client, 50 in flight):  {base['client-50']:.2f} usec/call")
        noop = base["EVALSHA"]

        # --- the claim script over the grid ---
        rows: list[list[Any]] = []
        results: dict[str, Any] = {"baselines": base, "claim": []}
        first: dict[str, float] = {}
        for jobs in grid_jobs:
            for nshapes in grid_shapes:
                started = time.monotonic()
                cell = await claim_cell(queue, server.port, jobs, nshapes, claims)
                for via, usec in cell.items():
                    first.setdefault(via, usec)
                    results["claim"].append({"jobs": jobs, "shapes": nshapes, "via": via, "usec": usec})
                rows.append(
                    [
                        f"{jobs:,}",
                        nshapes,
                        cell["minimal"],
                        cell["FCALL"],
                        cell["FCALL"] / noop,
                        cell["FCALL"] / cell["minimal"],
                        f"{cell['FCALL'] / first['FCALL'] - 1:+.0%}",
                        cell["EVALSHA"],
                        cell["EVALSHA"] / noop,
                        f"{cell['EVALSHA'] / first['EVALSHA'] - 1:+.0%}",
                        cell["client"],
                        cell["client"] / base["client-seq"],
                        f"{time.monotonic() - started:.0f}s",
                    ]
                )
                print(
                    f"  {jobs:>9,} jobs x {nshapes:>2} shapes: "
                    + ", ".join(f"{via} {usec:.2f}" for via, usec in cell.items())
                    + " usec/claim",
                    flush=True,
                )
        print()
        print(
            f"Claim, usec_per_call (INFO commandstats), {claims} claims per cell, driven by redis-benchmark "
            f"({BENCH_CLIENTS} clients) except the client column; 'minimal lease' = ZPOPMIN+ZADD+HSET+HGET on "
            f"the same data; ratios vs the no-op EVALSHA "
            f"({noop:.2f} usec) or, for the client column, vs the client's own one-at-a-time no-op "
            f"({base['client-seq']:.2f} usec):"
        )
        print(
            table(
                [
                    "waiting jobs",
                    "shapes",
                    "minimal lease",
                    "FCALL",
                    "x no-op",
                    "x minimal",
                    "vs 1k/1",
                    "EVALSHA",
                    "x no-op",
                    "vs 1k/1",
                    "client FCALL",
                    "x client no-op",
                    "cell time",
                ],
                rows,
            )
        )

        # --- the same cells with small zsets kept as skiplists: is the shapes penalty the listpack heads index? ---
        print()
        print(
            "Experiment: CONFIG SET zset-max-listpack-entries 0 (heads becomes a skiplist; no code change):"
        )
        experiment = []
        await client.config_set("zset-max-listpack-entries", 0)
        for nshapes in grid_shapes:
            cell = await claim_cell(queue, server.port, grid_jobs[0], nshapes, claims)
            experiment.append(
                [
                    f"{grid_jobs[0]:,}",
                    nshapes,
                    cell["FCALL"],
                    cell["FCALL"] / noop,
                    f"{cell['FCALL'] / first['FCALL'] - 1:+.0%}",
                    cell["EVALSHA"],
                ]
            )
            results["claim"].append(
                {
                    "jobs": grid_jobs[0],
                    "shapes": nshapes,
                    "via": "FCALL-skiplist-heads",
                    "usec": cell["FCALL"],
                }
            )
        await client.config_set("zset-max-listpack-entries", 128)
        print(
            table(["waiting jobs", "shapes", "FCALL", "x no-op", "vs 1k/1 (listpack)", "EVALSHA"], experiment)
        )

        # --- the other scripts, and everything without events ---
        print()
        count = 1_000 if args.quick else 3_000
        fallback = await connect(server.url, functions=False)
        quiet = await connect(server.url, functions=True, events=EventsMode.NONE)
        fcall_costs = await lifecycle_costs(queue, count)
        evalsha_costs = await lifecycle_costs(fallback, count)
        quiet_costs = await lifecycle_costs(quiet, count)
        print(
            f"Each script through the Python client, 50 calls in flight, {count} jobs (1 shape); "
            f"ratio vs the no-op EVALSHA through the same client, 50 in flight ({base['client-50']:.2f} usec):"
        )
        print(
            table(
                ["script", "FCALL usec", "EVALSHA usec", "FCALL, events=none", "FCALL x no-op"],
                [
                    [
                        name,
                        fcall_costs[name],
                        evalsha_costs[name],
                        quiet_costs[name],
                        fcall_costs[name] / base["client-50"],
                    ]
                    for name in fcall_costs
                ],
            )
        )
        results["lifecycle"] = {
            "fcall": fcall_costs,
            "evalsha": evalsha_costs,
            "fcall_events_none": quiet_costs,
        }
        fcalls = [r["usec"] for r in results["claim"] if r["via"] == "FCALL"]  # the default config only
        worst, ref = max(fcalls), first["FCALL"]
        print()
        print(
            f"target claim <= 3x no-op EVALSHA ({3 * noop:.2f} usec): worst FCALL claim {worst:.2f} usec = "
            f"{worst / noop:.1f}x -> {'MET' if worst <= 3 * noop else 'MISSED'}"
        )
        print(
            f"target flat within +10% of the 1k/1-shape cell: worst {worst / ref - 1:+.0%} "
            f"-> {'MET' if worst <= 1.10 * ref else 'MISSED'}"
        )
        if args.json:
            print(json.dumps(results))
        for q in (queue, fallback, quiet):
            await q.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller grid (under a minute)")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as one JSON line")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
