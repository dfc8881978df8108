"""Fair share across customers (docs/queue.md, "Fair share"): exact claim orders on a real Redis, slack 0.

Orders that depend on tags alone use small weights: at weight 0.001 a customer's tag moves 1 s per job, so the
few milliseconds a pipelined submit takes cannot reorder anything. Equal tags rank by job id (Redis orders
equal scores by member), which the ids here are chosen to make plain.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from appliance.queue import Queue
from appliance.queue.limits import InvalidLimits
from tests.cliproc import run_appliance

SLOW = 0.001  # weight: 1 s of virtual time per job


def jobs(customer: str | None, prefix: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    made = []
    for i in range(n):
        job: dict[str, Any] = {"id": f"{prefix}-{i}", "service": "echo", **extra}
        if customer is not None:
            job["customer_id"] = customer
        made.append(job)
    return made


async def claim_order(queue: Queue, shapes: list[str], n: int) -> list[str]:
    order = []
    for _ in range(n):
        claimed = await queue.claim("w", shapes)
        assert claimed is not None
        order.append(claimed.job.id)
    assert await queue.claim("w", shapes) is None
    return order


async def test_a_later_customer_interleaves_with_a_backlog(queue: Queue) -> None:
    await queue.limits.set("acme", weight=SLOW)
    await queue.limits.set("bolt", weight=SLOW)
    first = await queue.submit_many(jobs("acme", "a", 6))
    await queue.submit_many(jobs("bolt", "b", 3))
    # Strict FIFO gave a-0 ... a-5, b-0 ... b-2: bolt waited behind acme's whole backlog.
    order = await claim_order(queue, [first[0].shape], 9)
    assert order == ["a-0", "b-0", "a-1", "b-1", "a-2", "b-2", "a-3", "a-4", "a-5"]


async def test_a_newcomer_starts_within_one_claim(queue: Queue) -> None:
    # Default weights: bolt's first job takes the tag of acme's next job (equal scores rank by id).
    first = await queue.submit_many(jobs("acme", "a", 10))
    shape = first[0].shape
    assert [(await queue.claim("w", [shape])).job.id for _ in range(4)] == ["a-0", "a-1", "a-2", "a-3"]
    await queue.submit_many(jobs("bolt", "b", 3))
    assert [(await queue.claim("w", [shape])).job.id for _ in range(2)] == ["a-4", "b-0"]


async def test_weights_share_claims_in_proportion(queue: Queue) -> None:
    await queue.limits.set("acme", weight=3 * SLOW)
    await queue.limits.set("bolt", weight=SLOW)
    first = await queue.submit_many(jobs("acme", "a", 9))
    await queue.submit_many(jobs("bolt", "b", 3))
    order = await claim_order(queue, [first[0].shape], 12)
    assert order == ["a-0", "b-0", "a-1", "a-2", "a-3", "b-1", "a-4", "a-5", "a-6", "b-2", "a-7", "a-8"]


async def test_jobs_without_a_customer_are_one_customer(queue: Queue) -> None:
    await queue.limits.set(None, weight=SLOW)
    await queue.limits.set("bolt", weight=SLOW)
    first = await queue.submit_many(jobs(None, "a", 4))
    await queue.submit_many(jobs("bolt", "b", 2))
    order = await claim_order(queue, [first[0].shape], 6)
    assert order == ["a-0", "b-0", "a-1", "b-1", "a-2", "a-3"]


async def test_priorities_dominate_fair_share(queue: Queue) -> None:
    await queue.limits.set("acme", weight=SLOW)
    await queue.limits.set("bolt", weight=SLOW)
    first = await queue.submit_many(jobs("acme", "a", 3, priority=1))
    await queue.submit_many(jobs("bolt", "b", 3))
    await queue.submit_many(jobs("bolt", "c", 1, priority=2))
    order = await claim_order(queue, [first[0].shape], 7)
    # bolt's priority-2 job first, then acme's priority-1 backlog, then bolt's priority-0 jobs in its own order.
    assert order == ["c-0", "a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]


async def test_fair_share_holds_across_the_shapes_a_worker_serves(queue: Queue) -> None:
    await queue.limits.set("acme", weight=SLOW)
    await queue.limits.set("bolt", weight=SLOW)
    x = await queue.submit_many(jobs("acme", "a", 5, requirements={"tags": ["x"]}))
    y = await queue.submit_many(jobs("bolt", "b", 2, requirements={"tags": ["y"]}))
    assert x[0].shape != y[0].shape
    order = await claim_order(queue, [x[0].shape, y[0].shape], 7)
    assert order == ["a-0", "b-0", "a-1", "b-1", "a-2", "a-3", "a-4"]


async def test_one_customers_jobs_stay_fifo_across_shapes(queue: Queue) -> None:
    made = []
    for i in range(6):
        made += await queue.submit_many(jobs("acme", f"j{i}", 1, requirements={"tags": [f"t{i % 2}"]}))
    order = await claim_order(queue, sorted({j.shape for j in made}), 6)
    assert order == [j.id for j in made]


async def test_weights_are_validated_and_read_back(queue: Queue) -> None:
    assert (await queue.limits.get("acme")).weight == 1.0
    assert (await queue.limits.set("acme", weight=2.5)).weight == 2.5
    assert [(lim.customer, lim.weight) for lim in await queue.limits.list()] == [("acme", 2.5)]
    for bad in (0, -1, 1001):
        with pytest.raises(InvalidLimits, match="weight"):
            await queue.limits.set("acme", weight=bad)
    with pytest.raises(InvalidLimits, match="customer"):
        await queue.limits.set("no spaces", weight=2)
    await queue.limits.set("acme", weight=1)
    assert await queue.limits.list() == []


def test_limits_cli(redis_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_appliance(redis_url, "limits", *args)

    done = run("set", "acme", "--weight", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert '"weight": 3.0' in done.stdout
    shown = run("show")
    assert shown.returncode == 0 and "acme" in shown.stdout and "3" in shown.stdout
    bad = run("set", "acme", "--weight", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "weight" in bad.stderr
    empty = run("set", "acme")
    assert empty.returncode == 2 and "--weight" in empty.stderr
