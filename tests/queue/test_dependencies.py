"""Job dependencies (`after`, `on_parent_failure`) on a real Redis: a job waits, status blocked, until every parent
has finished; the script that ends a parent settles its children in the same atomic step (released, failed or
cancelled by policy, transitively); parents must exist at submit, so no cycle can form."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance.queue import InvalidJob, JobStatus, ParentNotFound, Queue
from appliance.queue.models import MAX_PARENTS

ECHO: dict[str, Any] = {"service": "echo"}


async def next_job(queue: Queue, shape: str) -> Any:
    return await queue.claim("w", [shape])


async def status(queue: Queue, job_id: str) -> JobStatus:
    job = await queue.get(job_id)
    assert job is not None, job_id
    return job.status


async def test_a_chain_runs_in_order_and_each_child_waits_visibly(queue: Queue) -> None:
    a = await queue.submit(ECHO | {"id": "a"})
    b = await queue.submit(ECHO | {"id": "b", "after": ["a"]})
    c = await queue.submit(ECHO | {"id": "c", "after": ["b"]})
    assert (b.status, c.status) == (JobStatus.BLOCKED, JobStatus.BLOCKED)
    got = await queue.get("c")
    assert got is not None and got.status is JobStatus.BLOCKED and got.waiting_on == ["b"]
    assert got.after == ["b"] and not got.unworkable
    stats = await queue.stats()
    assert (stats.blocked, stats.waiting, stats.unworkable) == (2, 1, 1)  # only a is in line (no live worker)
    assert {j.id for j in await queue.list_jobs(JobStatus.BLOCKED)} == {"b", "c"}
    order = []
    for _ in range(3):
        claimed = await next_job(queue, a.shape)
        assert claimed is not None
        assert await next_job(queue, a.shape) is None  # nothing else is in line meanwhile
        order.append(claimed.job.id)
        await queue.complete(claimed.job.id, claimed.token, {"from": claimed.job.id})
    assert order == ["a", "b", "c"]
    assert [await status(queue, j) for j in "abc"] == [JobStatus.COMPLETED] * 3
    assert (await queue.stats()).blocked == 0
    assert (await queue.stats()).totals["completed"] == 3


async def test_fan_in_waits_for_every_parent_and_sees_their_results(queue: Queue) -> None:
    for parent in ("p1", "p2", "p3"):
        await queue.submit(ECHO | {"id": parent})
    child = await queue.submit(ECHO | {"id": "kid", "after": ["p1", "p2", "p3"]})
    done = []
    while len(done) < 3:
        claimed = await next_job(queue, child.shape)
        assert claimed is not None and claimed.job.id != "kid"
        await queue.complete(claimed.job.id, claimed.token, {"n": claimed.job.id})
        done.append(claimed.job.id)
        got = await queue.get("kid")
        assert got is not None
        if len(done) < 3:
            assert got.status is JobStatus.BLOCKED
            assert got.waiting_on == [p for p in ("p1", "p2", "p3") if p not in done]
    claimed = await next_job(queue, child.shape)
    assert claimed is not None and claimed.job.id == "kid" and claimed.job.after == ["p1", "p2", "p3"]
    assert await queue.parent_results(claimed.job) == {p: {"n": p} for p in ("p1", "p2", "p3")}


async def test_fan_out_releases_every_child_when_the_parent_completes(queue: Queue) -> None:
    parent = await queue.submit(ECHO | {"id": "root"})
    kids = [f"k{i:04d}" for i in range(1200)]  # more than one round of requeue_due (500)
    await queue.submit_many([ECHO | {"id": k, "after": ["root"]} for k in kids])
    assert (await queue.stats()).blocked == 1200
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None and claimed.job.id == "root"
    await queue.complete("root", claimed.token, {})
    stats = await queue.stats()
    assert (stats.blocked, stats.delayed, stats.waiting) == (0, 0, 1200)  # all in line at once, no reaper
    seen = []
    while (one := await next_job(queue, parent.shape)) is not None:
        seen.append(one.job.id)
        await queue.complete(one.job.id, one.token, {})
    assert sorted(seen) == kids  # each exactly once
    edges = await queue.client.zcard(queue.keys.children)
    assert edges == 0


async def test_a_whole_graph_goes_in_one_batch_in_order(queue: Queue) -> None:
    jobs = await queue.submit_many(
        [ECHO | {"id": "x"}, ECHO | {"id": "y", "after": ["x"]}, ECHO | {"id": "z", "after": ["x", "y"]}]
    )
    assert [j.status for j in jobs] == [JobStatus.PENDING, JobStatus.BLOCKED, JobStatus.BLOCKED]
    assert (await queue.get("z")).waiting_on == ["x", "y"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(None, JobStatus.FAILED), ("fail", JobStatus.FAILED), ("cancel", JobStatus.CANCELLED)],
)
async def test_a_failed_parent_ends_its_children_down_the_chain(
    queue: Queue, policy: str | None, expected: JobStatus
) -> None:
    rule = {"on_parent_failure": policy} if policy else {}
    parent = await queue.submit(ECHO | {"id": "p"})
    await queue.submit(ECHO | {"id": "c1", "after": ["p"], **rule})
    await queue.submit(ECHO | {"id": "c2", "after": ["c1"], **rule})
    await queue.submit(ECHO | {"id": "other"})
    await queue.submit(ECHO | {"id": "c3", "after": ["c1", "other"], **rule})
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None and claimed.job.id == "p"
    await queue.fail("p", claimed.token, "broken", retryable=False)
    for child in ("c1", "c2", "c3"):
        got = await queue.get(child)
        assert got is not None and got.status is expected, child
        assert got.errors[-1]["kind"] in ("parent_failed", "parent_cancelled")
    c1 = await queue.get("c1")
    assert c1 is not None and c1.error == "parent p failed"
    stats = await queue.stats()
    assert stats.blocked == 0 and stats.totals[expected.value] == 3 + (expected is JobStatus.FAILED)
    assert await queue.client.zcard(queue.keys.children) == 0  # c3's edge to `other` went with it
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None and claimed.job.id == "other"
    await queue.complete("other", claimed.token, {})
    assert await next_job(queue, parent.shape) is None  # c3 ended: nothing released


async def test_ignore_lets_a_child_run_after_a_failed_parent(queue: Queue) -> None:
    parent = await queue.submit(ECHO | {"id": "p", "max_retries": 0})
    await queue.submit(ECHO | {"id": "ok"})
    await queue.submit(ECHO | {"id": "kid", "after": ["p", "ok"], "on_parent_failure": "ignore"})
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None and claimed.job.id == "p"
    assert await queue.fail("p", claimed.token, "x", retryable=True) is JobStatus.DEAD
    assert (await queue.get("kid")).waiting_on == ["ok"]  # type: ignore[union-attr]
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None and claimed.job.id == "ok"
    await queue.complete("ok", claimed.token, 7)
    kid = await next_job(queue, parent.shape)
    assert kid is not None and kid.job.id == "kid"
    assert await queue.parent_results(kid.job) == {"p": None, "ok": 7}


async def test_a_dead_parent_fails_its_children(queue: Queue) -> None:
    parent = await queue.submit(ECHO | {"id": "p", "max_retries": 0})
    await queue.submit(ECHO | {"id": "kid", "after": ["p"]})
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None
    assert await queue.fail("p", claimed.token, "flaky", retryable=True) is JobStatus.DEAD
    kid = await queue.get("kid")
    assert kid is not None and kid.status is JobStatus.FAILED and kid.errors[-1]["kind"] == "parent_dead"


@pytest.mark.parametrize(("policy", "expected"), [("cancel", JobStatus.CANCELLED), (None, JobStatus.FAILED)])
async def test_cancelling_a_parent_settles_its_children(
    queue: Queue, policy: str | None, expected: JobStatus
) -> None:
    rule = {"on_parent_failure": policy} if policy else {}
    await queue.submit(ECHO | {"id": "p"})
    await queue.submit(ECHO | {"id": "kid", "after": ["p"], **rule})
    await queue.submit(ECHO | {"id": "grandkid", "after": ["kid"], **rule})
    assert await queue.cancel("p") == "cancelled"
    assert [await status(queue, j) for j in ("kid", "grandkid")] == [expected, expected]
    assert (await queue.get("kid")).error == "parent p cancelled"  # type: ignore[union-attr]


async def test_cancelling_a_running_parent_settles_its_children_when_it_stops(queue: Queue) -> None:
    parent = await queue.submit(ECHO | {"id": "p"})
    await queue.submit(ECHO | {"id": "kid", "after": ["p"], "on_parent_failure": "cancel"})
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None
    assert await queue.cancel("p") == "requested"
    assert await status(queue, "kid") is JobStatus.BLOCKED  # p still runs
    await queue.finish_cancelled("p", claimed.token)
    assert await status(queue, "kid") is JobStatus.CANCELLED


async def test_cancelling_a_waiting_child_drops_its_edges_and_settles_its_own_children(queue: Queue) -> None:
    parent = await queue.submit(ECHO | {"id": "p"})
    await queue.submit(ECHO | {"id": "kid", "after": ["p"]})
    await queue.submit(ECHO | {"id": "grandkid", "after": ["kid"], "on_parent_failure": "ignore"})
    assert await queue.cancel("kid") == "cancelled"
    assert await status(queue, "kid") is JobStatus.CANCELLED
    assert await queue.client.zcard(queue.keys.children) == 0
    grandkid = await next_job(queue, parent.shape)  # p first (older), then the released grandkid after a reap
    assert grandkid is not None and grandkid.job.id == "p"
    await queue.reap(force=True)
    released = await next_job(queue, parent.shape)
    assert released is not None and released.job.id == "grandkid"


async def test_parents_already_finished_at_submit(queue: Queue) -> None:
    done = await queue.submit(ECHO | {"id": "done"})
    claimed = await next_job(queue, done.shape)
    assert claimed is not None
    await queue.complete("done", claimed.token, {"v": 1})
    bad = await queue.submit(ECHO | {"id": "bad"})
    claimed = await next_job(queue, bad.shape)
    assert claimed is not None
    await queue.fail("bad", claimed.token, "no", retryable=False)
    ready = await queue.submit(ECHO | {"id": "r", "after": ["done"]})
    assert ready.status is JobStatus.PENDING and await status(queue, "r") is JobStatus.PENDING
    failed = await queue.submit(ECHO | {"id": "f", "after": ["done", "bad"]})
    assert failed.status is JobStatus.FAILED and await status(queue, "f") is JobStatus.FAILED
    cancelled = await queue.submit(ECHO | {"id": "c", "after": ["bad"], "on_parent_failure": "cancel"})
    assert cancelled.status is JobStatus.CANCELLED
    ignoring = await queue.submit(ECHO | {"id": "i", "after": ["bad"], "on_parent_failure": "ignore"})
    assert ignoring.status is JobStatus.PENDING
    claimed = await next_job(queue, done.shape)
    assert claimed is not None and claimed.job.id == "r"
    assert await queue.parent_results(claimed.job) == {"done": {"v": 1}}
    assert (await queue.stats()).blocked == 0


async def test_a_missing_parent_is_one_clear_error_and_nothing_is_submitted(queue: Queue) -> None:
    await queue.submit(ECHO | {"id": "real"})
    with pytest.raises(ParentNotFound, match="after: job 'ghost' not found") as raised:
        await queue.submit(ECHO | {"id": "kid", "after": ["real", "ghost"]})
    assert isinstance(raised.value, InvalidJob) and await queue.get("kid") is None
    with pytest.raises(ParentNotFound, match="'ghost'"):
        await queue.submit_many([ECHO | {"id": "one"}, ECHO | {"id": "two", "after": ["one", "ghost"]}])
    with pytest.raises(ParentNotFound, match="'three'"):  # a parent later in the batch does not exist yet
        await queue.submit_many([ECHO | {"id": "two", "after": ["three"]}, ECHO | {"id": "three"}])
    assert await queue.get("one") is None and await queue.get("three") is None
    assert (await queue.stats()).totals.get("submitted") == 1


async def test_no_cycle_can_form(queue: Queue) -> None:
    with pytest.raises(InvalidJob, match="after: job 'me' cannot wait for itself"):
        await queue.submit(ECHO | {"id": "me", "after": ["me"]})
    a = await queue.submit(ECHO | {"id": "a"})
    await queue.submit(ECHO | {"id": "b", "after": ["a"]})
    # a cannot be made to wait for b: a exists already (ids are immutable), and a new a is refused.
    from appliance.queue import DuplicateJob

    with pytest.raises(DuplicateJob):
        await queue.submit(ECHO | {"id": "a", "after": ["b"]})
    assert (await queue.get("a")).after == [] and a.status is JobStatus.PENDING  # type: ignore[union-attr]


async def test_too_many_parents_is_refused(queue: Queue) -> None:
    ids = [f"p{i}" for i in range(MAX_PARENTS + 1)]
    with pytest.raises(InvalidJob, match=f"after: List should have at most {MAX_PARENTS} items"):
        await queue.submit(ECHO | {"after": ids})
    with pytest.raises(InvalidJob, match="after: 'not valid!' is not a valid job id"):
        await queue.submit(ECHO | {"after": ["not valid!"]})


async def test_an_expired_lease_of_a_parent_releases_the_child_once(queue: Queue) -> None:
    parent = await queue.submit(ECHO | {"id": "p"})
    await queue.submit(ECHO | {"id": "kid", "after": ["p"]})
    first = await next_job(queue, parent.shape)
    assert first is not None
    await asyncio.sleep(1.2)  # the lease (1 s in these tests) runs out: its worker died
    await queue.reap(force=True)
    assert await status(queue, "kid") is JobStatus.BLOCKED
    second = await next_job(queue, parent.shape)
    assert second is not None and second.job.id == "p" and second.attempt == 2
    await queue.complete("p", second.token, {})
    with pytest.raises(Exception, match="lease"):
        await queue.complete("p", first.token, {})  # the dead attempt's late completion changes nothing
    kid = await next_job(queue, parent.shape)
    assert kid is not None and kid.job.id == "kid"
    assert await next_job(queue, parent.shape) is None
    events = await queue.client.xrange(queue.keys.events)
    assert sum(1 for _, f in events if f.get("event") == "unblocked" and f.get("job") == "kid") == 1


async def test_children_are_released_before_the_parent_record_expires(make_queue: Any) -> None:
    queue: Queue = await make_queue(result_ttl_s=1, reaper_interval_ms=100, claim_slack_ms=0)
    parent = await queue.submit(ECHO | {"id": "p"})
    await queue.submit(ECHO | {"id": "kid", "after": ["p"]})
    claimed = await next_job(queue, parent.shape)
    assert claimed is not None
    await queue.complete("p", claimed.token, {"v": 2})
    await asyncio.sleep(1.2)
    await queue.reap(force=True)  # drops p's record
    assert await queue.get("p") is None
    kid = await next_job(queue, parent.shape)
    assert kid is not None and kid.job.id == "kid"
    assert await queue.parent_results(kid.job) == {"p": None}  # expired with its record: documented
