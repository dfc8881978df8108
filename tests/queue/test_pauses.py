"""Pause and resume a queue, a shape or a customer (docs/queue.md, "Pause and resume"), on a real Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from appliance.queue import JobStatus, Queue
from appliance.queue.events import EventKind
from appliance.queue.pauses import InvalidPause


def job(job_id: str, customer: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": job_id, "service": "echo", **extra}
    if customer is not None:
        spec["customer_id"] = customer
    return spec


async def test_a_paused_queue_claims_nothing_and_says_why(queue: Queue) -> None:
    first = await queue.submit(job("j1"))
    assert await queue.pauses.pause() is True
    assert await queue.pauses.pause() is False
    assert await queue.claim("w", [first.shape]) is None
    waiting = await queue.require("j1")
    assert waiting.status is JobStatus.PENDING and waiting.held_by == "queue paused"
    stats = await queue.stats()
    assert stats.paused == ["queue"] and stats.waiting == 1
    await queue.pauses.resume()
    assert (await queue.require("j1")).held_by is None
    assert (await queue.claim("w", [first.shape])).job.id == "j1"
    assert (await queue.stats()).paused == []


async def test_a_paused_shape_is_passed_over(queue: Queue) -> None:
    x = await queue.submit(job("x1", requirements={"tags": ["x"]}))
    y = await queue.submit(job("y1", requirements={"tags": ["y"]}))
    await queue.pauses.pause(shape=x.shape)
    # x1 ranks first, but its shape is paused: the worker serving both shapes gets y1, then nothing.
    assert (await queue.claim("w", [x.shape, y.shape])).job.id == "y1"
    assert await queue.claim("w", [x.shape, y.shape]) is None
    assert await queue.claim("w", [x.shape]) is None
    assert (await queue.require("x1")).held_by == "shape paused"
    await queue.pauses.resume(shape=x.shape)
    assert (await queue.claim("w", [x.shape, y.shape])).job.id == "x1"


async def test_a_paused_customers_jobs_wait_aside_and_come_back_in_place(queue: Queue) -> None:
    await queue.limits.set("acme", weight=0.001)
    await queue.limits.set("bolt", weight=0.001)
    shape = (await queue.submit_many([job(f"a-{i}", "acme") for i in range(3)]))[0].shape
    await queue.submit_many([job(f"b-{i}", "bolt") for i in range(2)])
    await queue.pauses.pause(customer="acme")
    assert [(await queue.claim("w", [shape])).job.id for _ in range(2)] == ["b-0", "b-1"]
    assert await queue.claim("w", [shape]) is None
    stats = await queue.stats()
    assert stats.held == 3 and stats.waiting == 0 and stats.paused == ["customer:acme"]
    held = await queue.require("a-1")
    assert held.status is JobStatus.PENDING and held.held_by == "customer paused"
    assert {j.id for j in await queue.list_jobs(JobStatus.PENDING)} == {"a-0", "a-1", "a-2"}
    assert await queue.cancel("a-1") == "cancelled"
    assert await queue.pauses.resume(customer="acme") == 2
    assert (await queue.stats()).held == 0
    await queue.submit(job("b-2", "bolt"))
    # Back at their original places: ahead of bolt's later job.
    assert [(await queue.claim("w", [shape])).job.id for _ in range(3)] == ["a-0", "a-2", "b-2"]


async def test_jobs_without_a_customer_pause_as_the_default_customer(queue: Queue) -> None:
    shape = (await queue.submit(job("n-0"))).shape
    await queue.submit(job("c-0", "acme"))
    await queue.pauses.pause(customer="-")
    assert (await queue.claim("w", [shape])).job.id == "c-0"
    assert await queue.claim("w", [shape]) is None
    assert await queue.pauses.resume(customer="-") == 1
    assert (await queue.claim("w", [shape])).job.id == "n-0"


async def test_no_claim_after_the_pause_takes_a_paused_customers_job(queue: Queue) -> None:
    # 8 workers race through two customers' jobs; acme is paused mid-way. In the event stream (server order),
    # nothing of acme's is claimed after the pause returned.
    specs = [job(f"{c}-{i}", c) for i in range(150) for c in ("acme", "bolt")]
    shape = (await queue.submit_many(specs))[0].shape
    done: list[str] = []
    started, paused = asyncio.Event(), asyncio.Event()

    async def worker(name: str) -> None:
        while True:
            claimed = await queue.claim(name, [shape])
            if claimed is None:  # before the pause, 300 jobs cannot run out: only after it
                assert paused.is_set()
                return
            await queue.complete(claimed.job.id, claimed.token, None)
            done.append(claimed.job.id)
            if len(done) >= 40:
                started.set()

    workers = [asyncio.create_task(worker(f"w{i}")) for i in range(8)]
    await started.wait()
    await queue.pauses.pause(customer="acme")
    paused.set()
    mark = (await queue.client.xrevrange(queue.keys.events, count=1))[0][0]
    await asyncio.gather(*workers)
    after, _ = await queue.events.after(f"({mark}", 10**9)  # a batch's claims share an entry: its events
    claimed_after = [e.job for e in after if e.kind is EventKind.CLAIMED]
    assert claimed_after and not [j for j in claimed_after if j.startswith("acme-")]
    stats = await queue.stats()
    assert stats.held > 0 and stats.held + stats.totals["completed"] == 300


async def test_pause_names_are_checked(queue: Queue) -> None:
    with pytest.raises(InvalidPause, match="shape"):
        await queue.pauses.pause(shape="nope")
    with pytest.raises(InvalidPause, match="customer"):
        await queue.pauses.pause(customer="no spaces")
    with pytest.raises(InvalidPause, match="not both"):
        await queue.pauses.pause(shape="0" * 16, customer="acme")


def test_queue_pause_and_resume_cli(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_REDIS_URL"] = redis_url

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, env=env, timeout=60
        )

    submitted = run("job", "submit", "--service", "echo", "--customer", "acme")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    paused = run("queue", "pause", "--customer", "acme")
    assert paused.returncode == 0 and paused.stdout.strip() == "customer:acme: paused"
    assert "already" in run("queue", "pause", "--customer", "acme").stdout
    shown = run("job", "get", job_id)
    assert "held: customer paused" in shown.stdout
    stats = run("job", "stats")
    assert "paused: customer:acme" in stats.stdout
    resumed = run("queue", "resume", "--customer", "acme", "--json")
    assert resumed.returncode == 0 and '"resumed": "customer:acme"' in resumed.stdout
    bad = run("queue", "pause", "--shape", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "shape" in bad.stderr
    both = run("queue", "pause", "--shape", "0" * 16, "--customer", "acme")
    assert both.returncode == 2


async def test_an_idle_worker_does_not_spin_on_a_paused_queue_and_wakes_on_resume(queue: Queue) -> None:
    from appliance.queue import Capabilities, WorkerSession

    await queue.submit(job("j1"))
    await queue.pauses.pause()
    session = await WorkerSession.open(queue, "w-idle", Capabilities(services=["echo"]))
    try:
        assert await session.claim() is None
        # idle.lua passes over the paused queue's waiting job: the worker registers as idle and sleeps, instead of
        # being told "a job waits, claim" again and again.
        assert await session.wait_for_work(0.3) is False
        assert await queue.client.hexists(queue.keys.waiting, "w-idle")
        await queue.pauses.resume()
        assert await session.wait_for_work(30) is True  # woken by the resume, not by a timeout
        assert (await session.claim()).job.id == "j1"
    finally:
        await session.close()
