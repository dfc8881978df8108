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
import statistics
import time
from typing import Any

import redis.asyncio as aioredis
from _common import NOOP_LIBRARY, NOOP_LUA, command_cost, machine_line, private_redis, redis_benchmark, table

from appliance.config.queue import ScriptsMode
from appliance.queue import EventsMode, JobSpec, Queue, QueueSettings, Requirements
from appliance.queue.scripts import ScriptSet

#: Fills one shape's ready index with `count` jobs per call. Mirrors submit.lua's writes (see its header).
LOADER = r"""
local spec_key, meta_key, state_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local heads_key, shapes_key, counts_key = KEYS[5], KEYS[6], KEYS[7]
local prefix, first, count, template = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local shape, shape_json, service, now = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local stride, offset = tonumber(ARGV[9]), tonumber(ARGV[10])
local specs, metas, states, ready = {}, {}, {}, {}
local best = nil
for i = first, first + count - 1 do
  local id = prefix .. string.format('%024d', i)
  -- Job i of shape `offset` ranks as if submitted round-robin over all shapes, 1 µs apart.
  local score = string.format('%.0f', now * 1000 + i * stride + offset)
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
#: claim_slack_ms of every queue the benchmark opens (--slack-ms; the default setting otherwise).
CLAIM_SLACK_MS = [QueueSettings().claim_slack_ms]
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
        prefix = len(queue.conn.common())  # submit.lua's own ARGV follow the common prefix
        self.calls = [queue.producer._submit_call(spec)[2][2][prefix:] for spec in shape_specs(nshapes)]
        # The client's own submit arguments give the exact JSON body, shape id and shape record it would write.
        self.shapes: list[str] = [args[2] for args in self.calls]
        self.next_index = [0] * nshapes

    async def top_up(self, total: int) -> None:
        """Make the shapes hold `total` waiting jobs between them (spread evenly)."""
        k = self.queue.keys
        per_shape = max(1, total // len(self.shapes))
        now = int(time.time() * 1000)
        for index, args in enumerate(self.calls):
            body, shape, record = args[1], args[2], args[3]
            missing = per_shape - int(await self.queue.client.zcard(k.ready(shape)))
            while missing > 0:
                count = min(LOAD_BATCH, missing)
                await self.loader(
                    keys=[k.spec, k.meta, k.state, k.ready(shape), k.heads, k.shapes, k.counts],
                    args=[
                        f"b{index:07d}",
                        self.next_index[index],
                        count,
                        body,
                        shape,
                        record,
                        "bench",
                        now,
                        len(self.shapes),
                        index,
                    ],
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


def claim_command(queue: Queue, shape: str, via: str) -> list[str]:
    """A one-shape claim exactly as Queue.claim sends it (fixed worker and token), for redis-benchmark to repeat."""
    _, keys, claim_args = queue.leases.claim_call(
        "bench-w", queue.worker_class([shape]), "0123456789abcdef01234567"
    )
    args = [str(a) for a in claim_args]
    if via == "FCALL":
        return ["FCALL", queue.scripts.function_name("claim"), str(len(keys)), *keys, *args]
    sha = hashlib.sha1(queue.scripts.sources["claim"].encode()).hexdigest()
    return ["EVALSHA", sha, str(len(keys)), *keys, *args]


async def client_claims(queue: Queue, shapes: list[str], claims: int, width: int) -> tuple[float, float]:
    """Claim `claims` jobs through Queue.claim, `width` at a time (one Queue, so one class and its hints, like the
    sessions of one worker process). Returns (server µs per claimed job, script calls per claimed job): a
    claim that has to look again ('retry') counts in both."""
    await stats_reset(queue)

    async def one() -> bool:
        # A claim that lost CLAIM_TRIES races in a row returns nothing; a worker would come straight back.
        for _ in range(100):
            if await queue.claim("bench-w", shapes) is not None:
                return True
        return False

    claimed = 0
    for start in range(0, claims, width):
        claimed += sum(await asyncio.gather(*(one() for _ in range(min(width, claims - start)))))
    calls, usec = await cost(queue, "fcall" if queue.scripts.use_functions else "evalsha")
    assert claimed == claims, (claimed, claims)
    return usec * calls / claimed, calls / claimed


async def claim_cell(filler: Filler, port: int, jobs: int, claims: int) -> dict[str, float]:
    """One measurement of the claim on a queue holding `jobs` (to `jobs + claims`) over the filler's shapes. Through
    the Python client, 50 in flight and one at a time; for one shape also the exact call repeated by
    redis-benchmark (FCALL and EVALSHA) and the minimal lease on the same data."""
    queue = filler.queue
    out: dict[str, float] = {"minimal": float("nan"), "FCALL": float("nan"), "EVALSHA": float("nan")}
    for width, label in ((BENCH_CLIENTS, "client-50"), (1, "client-seq")):
        await filler.top_up(jobs + claims)
        out[label], out[f"{label} calls"] = await client_claims(queue, filler.shapes, claims, width)
    if len(filler.shapes) == 1:
        await queue.client.script_load(queue.scripts.sources["claim"])
        minimal = await queue.client.script_load(MINIMAL_LEASE)
        k = queue.keys
        commands = {via: claim_command(queue, filler.shapes[0], via) for via in ("FCALL", "EVALSHA")}
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
        for via, command in commands.items():
            await filler.top_up(jobs + claims)
            await stats_reset(queue)
            redis_benchmark(port, claims, *command, clients=BENCH_CLIENTS)
            calls, out[via] = await cost(queue, command[0].lower())
            assert calls == claims, (via, calls, claims)
    return out


async def claim_depth(
    url: str, port: int, jobs: int, grid_shapes: list[int], claims: int, repeats: int
) -> dict[int, dict[str, float]]:
    """Every shape count at one depth, each in its own queue on the same server, measured `repeats` times in
    turn (1, 8, 64, 1, 8, 64, ...) so that the machine's slow and fast moments fall on every cell alike.
    Returns the median of each figure per shape count."""
    queues = {n: await connect(url, functions=True, name=f"bench{n}") for n in grid_shapes}
    await queues[grid_shapes[0]].client.flushall(asynchronous=True)
    await install_library(url)
    for queue in queues.values():
        await queue.scripts.load(queue.client)
    fillers = {n: Filler(q, n) for n, q in queues.items()}
    for filler in fillers.values():
        await filler.top_up(jobs)
        await check_fill(filler.queue, filler.shapes)
    samples: dict[int, list[dict[str, float]]] = {n: [] for n in grid_shapes}
    for _ in range(repeats):
        for n, filler in fillers.items():
            samples[n].append(await claim_cell(filler, port, jobs, claims))
    for queue in queues.values():
        await queue.close()
    return {
        n: {key: statistics.median(s[key] for s in cells) for key in cells[0]} for n, cells in samples.items()
    }


async def concurrently(calls: list[Any], width: int = BENCH_CLIENTS) -> list[Any]:
    """Await zero-argument coroutine factories `width` at a time (a busy server, like redis-benchmark's)."""
    out: list[Any] = []
    for start in range(0, len(calls), width):
        out += await asyncio.gather(*(call() for call in calls[start : start + width]))
    return out


async def lifecycle_costs(queue: Queue, count: int) -> dict[str, float]:
    """Server µs per job of submit, claim, heartbeat (1 and 8 leases) and complete through the Python client with
    50 calls in flight (submit: pipelined submit_many), then the batched forms a worker with 8 free slots uses:
    claim_many(8), complete_many(8) and finish_and_claim (complete 8 + claim 8 in one round trip)."""
    command = "fcall" if queue.scripts.use_functions else "evalsha"

    async def per_job(jobs: int) -> float:
        calls, usec = await cost(queue, command)
        return usec * calls / jobs

    await queue.client.flushall(asynchronous=True)
    out: dict[str, float] = {}
    specs = [JobSpec(service="bench", payload={"n": i}) for i in range(count)]
    await stats_reset(queue)
    jobs = await queue.submit_many(specs)
    out["submit"] = await per_job(count)
    shapes = [jobs[0].shape]
    await stats_reset(queue)
    leased = await concurrently([lambda: queue.claim("bench-w", shapes) for _ in range(count)])
    out["claim"] = await per_job(count)
    for size in (1, 8):
        groups = [{c.job.id: c.token for c in leased[i : i + size]} for i in range(0, count, size)]
        await stats_reset(queue)
        await concurrently([lambda g=g: queue.heartbeat("bench-w", g, shapes) for g in groups])
        out[f"heartbeat ({size} lease{'s' if size > 1 else ''}), per call"] = (await cost(queue, command))[1]
    await stats_reset(queue)
    await concurrently([lambda c=c: queue.complete(c.job.id, c.token, {"ok": True}) for c in leased])
    out["complete"] = await per_job(count)

    await queue.submit_many(specs)
    await stats_reset(queue)
    batches = await concurrently([lambda: queue.claim_many("bench-w", shapes, 8) for _ in range(count // 8)])
    out["claim_many(8), per job"] = await per_job(count)
    await stats_reset(queue)
    await concurrently(
        [lambda b=b: queue.complete_many([(c.job.id, c.token, {"ok": True}) for c in b]) for b in batches]
    )
    out["complete_many(8), per job"] = await per_job(count)
    await queue.submit_many(specs)
    await queue.submit_many(specs[: 8 * BENCH_CLIENTS])
    held = await concurrently([lambda: queue.claim_many("bench-w", shapes, 8) for _ in range(BENCH_CLIENTS)])
    await stats_reset(queue)

    async def loop(batch: list[Any]) -> None:
        for _ in range(count // 8 // BENCH_CLIENTS):
            _, batch = await queue.finish_and_claim(
                [(c.job.id, c.token, {"ok": True}) for c in batch], "bench-w", shapes, 8
            )

    await asyncio.gather(*(loop(b) for b in held))
    out["finish_and_claim(8), per job"] = await per_job(count // 8 // BENCH_CLIENTS * 8 * BENCH_CLIENTS)
    return out


async def connect(
    url: str, functions: bool, events: EventsMode = EventsMode.STREAM_AND_PUBSUB, name: str = "bench"
) -> Queue:
    if functions:  # the deployer's step: clients never load the library themselves
        await install_library(url)
    queue = await Queue.connect(
        url,
        queue_name=name,
        settings=QueueSettings(
            events=events,
            claim_slack_ms=CLAIM_SLACK_MS[0],
            scripts=ScriptsMode.FUNCTIONS if functions else ScriptsMode.EVAL,
        ),
    )
    assert queue.scripts.use_functions is functions
    return queue


async def install_library(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    await ScriptSet().install(client)
    await client.aclose()


async def run(args: argparse.Namespace) -> None:
    grid_jobs = [1_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    grid_shapes = [1, 64] if args.quick else [1, 8, 64]
    claims = 1_000 if args.quick else 3_000
    repeats = 3 if args.quick else 5
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

        results: dict[str, Any] = {"baselines": base, "claim": []}
        if args.part != "scripts":
            # --- the claim script over the grid ---
            rows: list[list[Any]] = []
            first: dict[str, float] = {}
            for jobs in grid_jobs:
                started = time.monotonic()
                depth = await claim_depth(server.url, server.port, jobs, grid_shapes, claims, repeats)
                for nshapes in grid_shapes:
                    cell = depth[nshapes]
                    for via, usec in cell.items():
                        first.setdefault(via, usec)
                        results["claim"].append({"jobs": jobs, "shapes": nshapes, "via": via, "usec": usec})
                    rows.append(
                        [
                            f"{jobs:,}",
                            nshapes,
                            cell["client-50"],
                            cell["client-50 calls"],
                            cell["client-50"] / base["client-50"],
                            f"{cell['client-50'] / first['client-50'] - 1:+.0%}",
                            cell["client-seq"],
                            cell["client-seq"] / base["client-seq"],
                            f"{cell['client-seq'] / first['client-seq'] - 1:+.0%}",
                            cell["FCALL"],
                            cell["FCALL"] / noop,
                            cell["minimal"],
                            cell["FCALL"] / cell["minimal"],
                            cell["EVALSHA"],
                            f"{time.monotonic() - started:.0f}s" if nshapes == grid_shapes[-1] else "",
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
                f"Claim, server µs per claimed job (INFO commandstats), median of {repeats} rounds of {claims} claims per "
                f"cell, the cells of one depth taken in turn. client-50: Queue.claim "
                f"with 50 in flight, vs the no-op EVALSHA sent the same way ({base['client-50']:.2f} µs); client-seq: "
                f"one at a time, vs its no-op ({base['client-seq']:.2f} µs); 'calls' counts script calls per claimed "
                f"job (a 'retry' answer is a second call). One shape only: the exact FCALL repeated by redis-benchmark "
                f"({BENCH_CLIENTS} clients) vs the no-op EVALSHA ({noop:.2f} µs), the minimal lease "
                f"(ZPOPMIN+ZADD+HSET+HGET) and the EVALSHA fallback:"
            )
            print(
                table(
                    [
                        "waiting jobs",
                        "shapes",
                        "client-50",
                        "calls",
                        "x no-op",
                        "vs 1k/1",
                        "client-seq",
                        "x no-op",
                        "vs 1k/1",
                        "FCALL (r-b)",
                        "x no-op",
                        "minimal lease",
                        "x minimal",
                        "EVALSHA (r-b)",
                        "depth time",
                    ],
                    rows,
                )
            )

        if args.part != "grid":
            # --- the other scripts, and everything without events ---
            print()
            count = 1_000 if args.quick else 3_000
            fallback = await connect(server.url, functions=False)
            quiet = await connect(server.url, functions=True, events=EventsMode.NONE)
            fcall_costs = await lifecycle_costs(queue, count)
            evalsha_costs = await lifecycle_costs(fallback, count)
            quiet_costs = await lifecycle_costs(quiet, count)
            print(
                f"Each script through the Python client, 50 calls in flight, {count} jobs (1 shape), server µs per job "
                f"(heartbeats: per call); ratio vs the no-op EVALSHA sent the same way ({base['client-50']:.2f} µs):"
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
            for extra in (fallback, quiet):
                await extra.close()
            results["lifecycle"] = {
                "fcall": fcall_costs,
                "evalsha": evalsha_costs,
                "fcall_events_none": quiet_costs,
            }
        busy = [r["usec"] for r in results["claim"] if r["via"] == "client-50"]
        rb = [r["usec"] for r in results["claim"] if r["via"] == "FCALL" and r["usec"] == r["usec"]]
        if busy:
            print()
            print(
                f"target claim <= 3x no-op EVALSHA: redis-benchmark FCALL {max(rb):.2f} µs = {max(rb) / noop:.1f}x, "
                f"client-50 worst {max(busy):.2f} µs = {max(busy) / base['client-50']:.1f}x -> "
                f"{'MET' if max(rb) <= 3 * noop else 'MISSED'}"
            )
            print(
                f"target flat within +10% of the 1k/1-shape cell (client-50): worst {max(busy) / busy[0] - 1:+.0%} "
                f"-> {'MET' if max(busy) <= 1.10 * busy[0] else 'MISSED'}"
            )
        if args.json:
            print(json.dumps(results))
        await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller grid (under a minute)")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as one JSON line")
    parser.add_argument(
        "--part",
        choices=("all", "grid", "scripts"),
        default="all",
        help="the claim grid, the other scripts, or both",
    )
    parser.add_argument(
        "--slack-ms", type=int, default=None, help="queue.claim_slack_ms (0: strict order across shapes)"
    )
    args = parser.parse_args()
    if args.slack_ms is not None:
        CLAIM_SLACK_MS[0] = args.slack_ms
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
