"""Per-customer limits (issue 16): jobs in flight, fleet-wide and per pool, and a start rate, enforced by the
claim. Racing workers are real processes (claimer.py); what they did is read back from the event
stream, whose entry ids carry the server's clock."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from appliance.queue import JobStatus, Queue, QueueSettings
from appliance.queue.limits import InvalidLimits
from tests.cliproc import run_appliance

WORKER = str(Path(__file__).with_name("claimer.py"))
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
#: Events that end a lease (what the workers here produce, and what a reaper or a failure would).
ENDS = {"completed", "failed", "dead", "released", "lease_expired", "cancelled"}


async def run_workers(redis_url: str, pools: Iterable[str], per_process: int, hold_ms: int) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            *(
                WORKER,
                redis_url,
                str(i),
                str(per_process),
                "--pool",
                pool,
                "--hold-ms",
                str(hold_ms),
                "--barrier",
            ),
            env=ENV,
            stdout=asyncio.subprocess.PIPE,
        )
        for i, pool in enumerate(pools)
    ]
    for proc in procs:  # all registered before any claims: they race
        assert proc.stdout is not None
        for _ in range(per_process):
            assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
    client = aioredis.Redis.from_url(redis_url)
    await client.rpush("test:go", *[1] * (len(procs) * per_process))
    await client.aclose()
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 300)
    assert codes == [0] * len(procs)


async def stream(queue: Queue) -> list[tuple[int, dict[str, str]]]:
    """Every event, in order, with the server ms of its entry id (a batch's events share an entry)."""
    return [(e.at_ms, dict(e.fields)) for e in await queue.events.window(0, 10**9)]


def peaks(
    events: list[tuple[int, dict[str, str]]], key: Callable[[dict[str, str]], str | None]
) -> tuple[Counter[str], list[tuple[str, Counter[str]]]]:
    """The most jobs each key (customer, customer+pool) held at once, and after each claim who held what."""
    now: Counter[str] = Counter()
    top: Counter[str] = Counter()
    after_claims = []
    for _, fields in events:
        k = key(fields)
        if k is None:
            continue
        if fields["event"] == "claimed":
            now[k] += 1
            top[k] = max(top[k], now[k])
            after_claims.append((k, Counter(now)))
        elif fields["event"] in ENDS:
            now[k] -= 1
            assert now[k] >= 0, f"{k}: a lease ended that never began"
    assert sum(now.values()) == 0, "every lease ended"
    return top, after_claims


async def test_in_flight_never_exceeds_the_cap_with_8_workers_racing_and_others_pass(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    try:
        await queue.limits.set("acme", max_in_flight=3)
        acme = await queue.submit_many([{"service": "echo", "customer_id": "acme"} for _ in range(80)])
        bolt = await queue.submit_many([{"service": "echo", "customer_id": "bolt"} for _ in range(40)])
        customer = {j.id: j.customer_id or "-" for j in [*acme, *bolt]}
        await run_workers(redis_url, ["-"] * 4, 2, hold_ms=20)
        events = await stream(queue)
        top, after_claims = peaks(events, lambda f: customer.get(f.get("job", "")))
        assert top["acme"] == 3  # reached, never passed, with 8 workers racing
        assert top["bolt"] > 3  # the other customer is not capped
        # bolt's jobs were claimed while acme sat at its cap: a capped customer does not block the others.
        assert any(who == "bolt" and held["acme"] == 3 for who, held in after_claims)
        completed = Counter(f["job"] for _, f in events if f["event"] == "completed")
        assert set(completed) == set(customer) and set(completed.values()) == {1}
        assert (await queue.limits.get("acme")).in_flight == 0
        assert (await queue.stats()).limited == 0
    finally:
        await queue.close()


async def test_a_pool_cap_counts_only_that_pools_workers(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    try:
        await queue.limits.set("acme", max_in_flight=1, pool="gpu")
        specs = [
            {"service": "echo", "customer_id": "acme", "pool": p} for p in ("gpu", "cpu") for _ in range(30)
        ]
        # Jobs without a pool run on either pool's workers: the gpu cap counts them while a gpu worker runs them.
        specs += [{"service": "echo", "customer_id": "acme"} for _ in range(20)]
        jobs = await queue.submit_many(specs)
        pools = ["gpu", "cpu", "gpu", "cpu"]  # process i's workers are p<i>-w*
        ids = {j.id for j in jobs}

        def on_pool(fields: dict[str, str]) -> str | None:
            worker = fields.get("worker", "")
            if fields.get("job") not in ids or not worker.startswith("p"):
                return None
            return pools[int(worker[1 : worker.index("-")])]

        await run_workers(redis_url, pools, 2, hold_ms=20)
        top, _ = peaks(await stream(queue), on_pool)
        assert top["gpu"] == 1  # reached, never passed, by four gpu workers racing
        assert top["cpu"] > 1  # the cap is on the gpu pool only
        assert {(await queue.require(j.id)).status for j in jobs} == {JobStatus.COMPLETED}
        assert (await queue.limits.get("acme")).in_flight == 0
    finally:
        await queue.close()


async def test_the_rate_never_exceeds_the_bucket_over_any_second(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    rate, burst, n = 20.0, 4.0, 50
    try:
        await queue.limits.set("acme", rate=rate, burst=burst)
        jobs = await queue.submit_many([{"service": "echo", "customer_id": "acme"} for _ in range(n)])
        ids = {j.id for j in jobs}
        await run_workers(redis_url, ["-"] * 4, 2, hold_ms=0)
        starts = sorted(at for at, f in await stream(queue) if f["event"] == "claimed" and f["job"] in ids)
        assert len(starts) == n
        # A token bucket lets at most burst + rate * T starts into any window of T seconds (server clock).
        for i, t in enumerate(starts):
            within = sum(1 for s in starts[i:] if s <= t + 1000)
            assert within <= burst + rate, f"{within} starts in the second from {t}"
        # ... so n starts take at least (n - burst) / rate seconds: the limit held them back.
        assert starts[-1] - starts[0] >= (n - burst) / rate * 1000 - 2
    finally:
        await queue.close()


async def _end(queue: Queue, how: str, claimed) -> None:
    job_id, token = claimed.job.id, claimed.token
    if how == "complete":
        await queue.complete(job_id, token, {})
    elif how == "fail":
        assert await queue.fail(job_id, token, "x", retryable=False) is JobStatus.FAILED
    elif how == "retry":
        assert await queue.fail(job_id, token, "x", retryable=True) is JobStatus.PENDING
    elif how == "release":
        await queue.release(job_id, token)
    elif how == "cancel":
        await queue.cancel(job_id)  # running: its worker is told, and stops it
        await queue.finish_cancelled(job_id, token)


@pytest.mark.parametrize("how", ["complete", "fail", "retry", "release", "cancel"])
async def test_every_lease_end_frees_the_slot_and_the_held_job_comes_back(queue: Queue, how: str) -> None:
    await queue.limits.set("acme", max_in_flight=1)
    first = await queue.submit({"service": "echo", "customer_id": "acme"})
    second = await queue.submit({"service": "echo", "customer_id": "acme"})
    claimed = await queue.claim("w", [first.shape])
    assert claimed is not None and claimed.job.id == first.id
    assert await queue.claim("w", [first.shape]) is None  # at the cap: the second is held out of line
    stats = await queue.stats()
    assert (stats.waiting, stats.limited, stats.unworkable) == (0, 1, 0)
    assert (await queue.get(second.id)).held_by == "customer acme at in-flight cap 1/1"
    assert (await queue.limits.get("acme")).in_flight == 1
    await _end(queue, how, claimed)
    nxt = await queue.claim("w", [first.shape])
    # A retried or released first job is back at its place, ahead of the second; either way one runs.
    expected = first.id if how in ("retry", "release") else second.id
    assert nxt is not None and nxt.job.id == expected
    assert (await queue.limits.get("acme")).in_flight == 1
    await queue.complete(nxt.job.id, nxt.token, {})
    last = await queue.claim("w", [first.shape])
    if how in ("retry", "release"):
        assert last is not None and last.job.id == second.id
        await queue.complete(last.job.id, last.token, {})
    else:
        assert last is None
    found = await queue.limits.get("acme")
    assert (found.in_flight, found.held) == (0, 0)


async def test_a_worker_killed_9_frees_its_slot_through_the_reaper(redis_url: str) -> None:
    queue = await Queue.connect(redis_url, settings=QueueSettings(lease_ms=1000, reaper_interval_ms=100))
    try:
        await queue.limits.set("acme", max_in_flight=1)
        first = await queue.submit({"service": "echo", "customer_id": "acme"})
        second = await queue.submit({"service": "echo", "customer_id": "acme"})
        doomed = await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            redis_url,
            "0",
            "1",
            "--pool",
            "-",
            "--barrier",
            "--hang",
            env=ENV,
            stdout=asyncio.subprocess.PIPE,
        )
        assert doomed.stdout is not None
        assert (await asyncio.wait_for(doomed.stdout.readline(), 30)).strip() == b"ready"
        await queue.client.rpush("test:go", 1)
        line = await asyncio.wait_for(doomed.stdout.readline(), 30)
        assert line.decode().strip() == f"claimed {first.id}"
        assert await queue.claim("w", [first.shape]) is None  # the second is held behind the doomed one
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        done = []
        for _ in range(200):  # the lease expires after 1 s of the server's clock; the reaper returns it
            await queue.reap()
            claimed = await queue.claim("w", [first.shape])
            if claimed is not None:
                await queue.complete(claimed.job.id, claimed.token, {})
                done.append(claimed.job.id)
            if len(done) == 2:
                break
            await asyncio.sleep(0.05)
        assert done == [first.id, second.id]  # the expired one first (its place in line), then the held one
        found = await queue.limits.get("acme")
        assert (found.in_flight, found.held) == (0, 0)
    finally:
        await queue.close()


async def test_raising_then_removing_the_cap_puts_held_jobs_back(queue: Queue) -> None:
    await queue.limits.set("acme", max_in_flight=1)
    jobs = await queue.submit_many([{"service": "echo", "customer_id": "acme"} for _ in range(5)])
    shape = jobs[0].shape
    claimed = await queue.claim("w", [shape])
    assert claimed is not None and claimed.job.id == jobs[0].id
    assert await queue.claim("w", [shape]) is None
    assert ((await queue.stats()).waiting, (await queue.stats()).limited) == (0, 4)
    await queue.limits.set("acme", max_in_flight=3)  # two more may run: the two best go back in line
    stats = await queue.stats()
    assert (stats.waiting, stats.limited) == (2, 2)
    got = [await queue.claim("w", [shape]) for _ in range(2)]
    assert [c.job.id for c in got if c] == [jobs[1].id, jobs[2].id]
    assert await queue.claim("w", [shape]) is None
    await queue.limits.remove("acme", max_in_flight=True)
    stats = await queue.stats()
    assert (stats.waiting, stats.limited) == (2, 0)
    assert [c.job.id for c in [await queue.claim("w", [shape]) for _ in range(2)] if c] == [
        j.id for j in jobs[3:]
    ]


async def test_a_limit_set_while_jobs_run_counts_them(queue: Queue) -> None:
    jobs = await queue.submit_many([{"service": "echo", "customer_id": "acme"} for _ in range(3)])
    running = [await queue.claim("w", [jobs[0].shape]) for _ in range(2)]
    assert all(running)
    limits = await queue.limits.set("acme", max_in_flight=2)
    assert limits.in_flight == 2  # the two already running count at once
    assert await queue.claim("w", [jobs[0].shape]) is None
    for c in running:
        assert c is not None
        await queue.complete(c.job.id, c.token, {})
    assert (await queue.limits.get("acme")).in_flight == 0
    last = await queue.claim("w", [jobs[0].shape])
    assert last is not None and last.job.id == jobs[2].id


async def test_a_capped_customer_does_not_block_others_and_priority_still_wins(queue: Queue) -> None:
    await queue.limits.set("acme", max_in_flight=1)
    # Ids that order ties (bolt's first job takes the tag of the job next in line: acme's first).
    acme = await queue.submit_many(
        [{"id": f"a-{i}", "service": "echo", "customer_id": "acme"} for i in range(3)]
    )
    bolt = await queue.submit_many(
        [{"id": f"b-{i}", "service": "echo", "customer_id": "bolt"} for i in range(3)]
    )
    shape = acme[0].shape
    order = []
    while (c := await queue.claim("w", [shape])) is not None:
        order.append(c)
    # acme's first, then only bolt's, in bolt's own order: acme's others wait held, out of everyone's way.
    assert [c.job.id for c in order] == [acme[0].id, *[j.id for j in bolt]]
    urgent = await queue.submit({"service": "echo", "customer_id": "bolt", "priority": 5})
    await queue.complete(order[0].job.id, order[0].token, {})  # acme may run one again ...
    first = await queue.claim("w", [shape])
    assert first is not None and first.job.id == urgent.id  # ... but priority still comes first
    second = await queue.claim("w", [shape])
    assert second is not None and second.job.id == acme[1].id
    assert await queue.claim("w", [shape]) is None


async def test_a_rate_held_job_says_so_and_comes_back_when_a_token_accrues(queue: Queue) -> None:
    await queue.limits.set("acme", rate=2, burst=1)
    jobs = await queue.submit_many([{"service": "echo", "customer_id": "acme"} for _ in range(2)])
    assert (await queue.claim("w", [jobs[0].shape])) is not None
    assert await queue.claim("w", [jobs[0].shape]) is None
    assert (await queue.get(jobs[1].id)).held_by == "customer acme at rate 2/s (burst 1)"
    for _ in range(100):  # the token accrues after 500 ms of the server clock; the reaper puts the job back
        await queue.reap()
        if (await queue.stats()).waiting:
            break
        await asyncio.sleep(0.05)
    again = await queue.claim("w", [jobs[0].shape])
    assert again is not None and again.job.id == jobs[1].id


async def test_bad_limits_are_refused_naming_the_field(queue: Queue) -> None:
    with pytest.raises(InvalidLimits, match="max_in_flight"):
        await queue.limits.set("acme", max_in_flight=-1)
    with pytest.raises(InvalidLimits, match="rate"):
        await queue.limits.set("acme", rate=0)
    with pytest.raises(InvalidLimits, match="burst"):
        await queue.limits.set("acme", rate=1, burst=0.5)
    with pytest.raises(InvalidLimits, match="--pool needs --max-in-flight"):
        await queue.limits.set("acme", pool="gpu")
    with pytest.raises(InvalidLimits, match="pool"):
        await queue.limits.set("acme", pool="bad pool!", max_in_flight=1)
    with pytest.raises(InvalidLimits, match="no cap on pool"):
        await queue.limits.remove("acme", pool="gpu")
    assert await queue.limits.list() == []


async def test_job_get_stats_and_the_limits_commands_say_which_limit_holds(redis_url: str) -> None:
    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_appliance, redis_url, *args)

    queue = await Queue.connect(redis_url)
    try:
        done = await run("limits", "set", "acme", "--max-in-flight", "1")
        assert done.returncode == 0, done.stderr
        first = await queue.submit({"service": "echo", "customer_id": "acme"})
        second = await queue.submit({"service": "echo", "customer_id": "acme"})
        assert await queue.claim("w", [first.shape]) is not None
        assert await queue.claim("w", [first.shape]) is None
        got = await run("job", "get", second.id)
        assert got.returncode == 0, got.stderr
        assert "pending (held: customer acme at in-flight cap 1/1)" in got.stdout
        assert "unworkable" not in got.stdout
        stats = await run("job", "stats")
        assert stats.returncode == 0, stats.stderr
        assert "0 waiting" in stats.stdout and "0 unworkable" in stats.stdout
        assert "limits: 1 jobs held out of line by a customer's limit (not unworkable)" in stats.stdout
        assert "acme: 1 held: customer acme at in-flight cap 1/1" in stats.stdout
        await run("limits", "set", "acme", "--max-in-flight", "1", "--pool", "gpu")
        await run("limits", "set", "bolt", "--rate", "2")
        shown = await run("limits", "show")
        assert shown.returncode == 0, shown.stderr
        lines = {line.split()[0]: line for line in shown.stdout.splitlines()[1:]}
        assert lines["acme"].split()[2:5] == ["1/1", "gpu=1", "-"] and lines["acme"].endswith(" 1")
        assert "2/s burst 2" in lines["bolt"]
        removed = await run("limits", "rm", "acme", "--max-in-flight", "--json")
        assert removed.returncode == 0, removed.stderr
        assert '"max_in_flight": null' in removed.stdout and '"held": 0' in removed.stdout
        stats_after = await queue.stats()
        assert (stats_after.waiting, stats_after.limited) == (1, 0)
        for argv, words in [
            (("set", "acme", "--pool", "gpu"), "--pool needs --max-in-flight"),
            (("rm", "acme", "--pool", "cpu"), "no cap on pool 'cpu'"),
            (("set", "acme", "--burst", "3"), "burst needs a rate"),
            (("set", "acme", "--max-in-flight", "-1"), "max_in_flight"),
            (("set", "acme", "--rate", "0"), "rate"),
        ]:
            bad = await run("limits", *argv)
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and words in bad.stderr, bad.stderr
    finally:
        await queue.close()


async def test_a_held_job_cancels_at_once_and_leaves_the_limited_set_with_it(queue: Queue) -> None:
    await queue.limits.set("acme", max_in_flight=1)
    jobs = await queue.submit_many([{"service": "echo", "customer_id": "acme"} for _ in range(3)])
    running = await queue.claim("w", [jobs[0].shape])
    assert running is not None and await queue.claim("w", [jobs[0].shape]) is None
    assert ((await queue.stats()).limited, (await queue.limits.get("acme")).held) == (2, 2)
    assert await queue.cancel(jobs[1].id) == "cancelled"
    assert (await queue.get(jobs[1].id)).status is JobStatus.CANCELLED
    # Its `limited` entry went with it: nothing counts it as held before the customer's next release.
    assert ((await queue.stats()).limited, (await queue.limits.get("acme")).held) == (1, 1)
    await queue.complete(running.job.id, running.token, {})
    nxt = await queue.claim("w", [jobs[0].shape])
    assert nxt is not None and nxt.job.id == jobs[2].id
    await queue.complete(nxt.job.id, nxt.token, {})
    assert await queue.claim("w", [jobs[0].shape]) is None
    assert ((await queue.stats()).limited, (await queue.limits.get("acme")).in_flight) == (0, 0)
