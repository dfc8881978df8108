"""Memory per waiting job, split into the claim index and the job record, and the return to baseline.

    python bench/memory.py [--quick]

Submits small jobs through the real client (pipelined submit_many), reads INFO memory used_memory before and after,
and MEMORY USAGE of every queue key to split the figure: index = the shape's ready zset + the heads zset; record =
the spec, meta and state columns; events = the capped lifecycle stream (bounded by events_maxlen, so its cost per job
falls as the queue grows). Then drains the queue (claim + complete), lets the result TTL pass, reaps, and prints what
is left against the baseline; a second identical cycle shows whether anything grows per cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from _common import machine_line, private_redis, table

from appliance.queue import JobSpec, Queue, QueueSettings

TARGET_INDEX_BYTES = 300
WIDTH = 50  # claims/completes in flight while draining


async def used(queue: Queue) -> int:
    """used_memory less the client connections' buffers (the drain opens 50 connections: not queue data)."""
    info = await queue.client.info("memory")
    return int(info["used_memory"]) - int(info["mem_clients_normal"])


async def key_sizes(queue: Queue) -> dict[str, int]:
    """MEMORY USAGE (all samples) of every key of the queue, by key suffix."""
    sizes = {}
    async for key in queue.client.scan_iter(match=f"{queue.keys.prefix}*", count=1000):
        sizes[key.removeprefix(queue.keys.prefix)] = int(await queue.client.memory_usage(key, samples=0) or 0)
    return sizes


async def submit(queue: Queue, jobs: int) -> list[str]:
    shapes: set[str] = set()
    for start in range(0, jobs, 10_000):
        batch = [JobSpec(service="bench", payload={"n": i}) for i in range(start, min(jobs, start + 10_000))]
        shapes.update(job.shape for job in await queue.submit_many(batch))
    return sorted(shapes)


async def drain(queue: Queue, shapes: list[str]) -> int:
    async def worker(index: int) -> int:
        done = 0
        while (claimed := await queue.claim(f"bench-{index}", shapes)) is not None:
            await queue.complete(claimed.job.id, claimed.token, {"ok": True})
            done += 1
        return done

    return sum(await asyncio.gather(*(worker(i) for i in range(WIDTH))))


async def expire_and_reap(queue: Queue) -> int:
    await asyncio.sleep(queue.settings.result_ttl_s + 0.2)
    dropped = 0
    while True:
        result = await queue.reap(force=True, limit=5_000)
        dropped += result.records_dropped
        if result.records_dropped == 0:
            return dropped


async def cycle(queue: Queue, jobs: int, baseline: int, label: str) -> dict[str, Any]:
    started = time.monotonic()
    shapes = await submit(queue, jobs)
    loaded = await used(queue)
    sizes = await key_sizes(queue)
    index = sum(v for k, v in sizes.items() if k.startswith("ready:")) + sizes.get("heads", 0)
    record = sizes.get("spec", 0) + sizes.get("meta", 0) + sizes.get("state", 0)
    events = sizes.get("events", 0)
    drained = await drain(queue, shapes)
    after_drain = await used(queue)
    dropped = await expire_and_reap(queue)
    after_reap = await used(queue)
    left = await key_sizes(queue)
    return {
        "label": label,
        "jobs": jobs,
        "loaded": loaded - baseline,
        "index": index,
        "record": record,
        "events": events,
        "drained": drained,
        "after_drain": after_drain - baseline,
        "dropped": dropped,
        "after_reap": after_reap - baseline,
        "left": left,
        "seconds": time.monotonic() - started,
        "spec_bytes": sizes.get("spec", 0),
        "meta_bytes": sizes.get("meta", 0),
        "state_bytes": sizes.get("state", 0),
    }


async def run(args: argparse.Namespace) -> None:
    jobs = 20_000 if args.quick else 100_000
    print(f"# memory ({'quick' if args.quick else 'full'}) on {machine_line()}")
    with private_redis() as server:
        queue = await Queue.connect(server.url, queue_name="bench", settings=QueueSettings(result_ttl_s=1))
        baseline = await used(queue)
        print(f"baseline used_memory (scripts loaded, queue empty): {baseline:,} bytes")
        first = await cycle(queue, jobs, baseline, "cycle 1")
        second = await cycle(queue, jobs, baseline, "cycle 2")
        n = first["jobs"]
        print()
        print(f"{n:,} waiting jobs, payload {{\"n\": i}}, service 'bench', one shape; bytes per waiting job:")
        print(
            table(
                ["part", "keys", "bytes/job"],
                [
                    ["index (ready zset + heads)", "ready:<shape>, heads", first["index"] / n],
                    ["  record: spec (job JSON)", "spec", first["spec_bytes"] / n],
                    ["  record: meta", "meta", first["meta_bytes"] / n],
                    ["  record: state", "state", first["state_bytes"] / n],
                    ["record total", "spec, meta, state", first["record"] / n],
                    ["events stream (capped, amortised)", "events", first["events"] / n],
                    ["used_memory delta", "(everything)", first["loaded"] / n],
                ],
            )
        )
        print()
        print("Return to baseline (used_memory - mem_clients_normal, minus the baseline; bytes):")
        print(
            table(
                ["cycle", "jobs", "loaded", "after drain", "records reaped", "after TTL + reap", "time"],
                [
                    [
                        c["label"],
                        f"{c['jobs']:,}",
                        f"{c['loaded']:,}",
                        f"{c['after_drain']:,}",
                        f"{c['dropped']:,}",
                        f"{c['after_reap']:,}",
                        f"{c['seconds']:.0f}s",
                    ]
                    for c in (first, second)
                ],
            )
        )
        print()
        print(
            "Keys left after cycle 2 (MEMORY USAGE, bytes): "
            + ", ".join(f"{k}={v:,}" for k, v in sorted(second["left"].items(), key=lambda kv: -kv[1]))
        )
        growth = second["after_reap"] - first["after_reap"]
        print(f"growth from cycle 1 to cycle 2 after reap: {growth:+,} bytes ({growth / n:+.2f} per job)")
        per_index = first["index"] / n
        print()
        print(
            f"target index <= {TARGET_INDEX_BYTES} bytes/waiting job: {per_index:.0f} -> "
            f"{'MET' if per_index <= TARGET_INDEX_BYTES else 'MISSED'}"
        )
        fixed = sum(second["left"].values())
        print(
            f"after drain + TTL + reap: {second['after_reap']:+,} bytes vs baseline, of which {fixed:,} are the "
            f"queue's bounded keys listed above (events stream capped at {queue.settings.events_maxlen:,} entries)"
        )
        await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k jobs instead of 100k")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
