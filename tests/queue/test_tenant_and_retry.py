"""The queue's additions for the HTTP API: a customer's own job index (paged, never a scan) and dead-letter
replay (a failed or dead job back in line)."""

from __future__ import annotations

import pytest

from appliance.queue import Capabilities, JobNotRetryable, JobStatus, Queue, WorkerSession
from appliance.queue.reader import TENANT_PAGE_READS


async def test_a_customers_pages_hold_only_its_jobs_newest_first(queue: Queue) -> None:
    mine = [(await queue.submit({"service": "echo", "customer_id": "acme"})).id for _ in range(7)]
    await queue.submit({"service": "echo", "customer_id": "other"})
    await queue.submit({"service": "echo"})
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await queue.tenant_page("acme", limit=3, cursor=cursor)
        assert len(page) <= 3
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == list(reversed(mine))


async def test_a_status_filter_reads_a_bounded_slice_per_page(queue: Queue) -> None:
    ids = [(await queue.submit({"service": "echo", "customer_id": "acme"})).id for _ in range(20)]
    await queue.cancel(ids[0])  # the oldest: far behind 19 pending ones
    page, cursor = await queue.tenant_page("acme", status=JobStatus.CANCELLED, limit=1)
    assert page == [] and cursor is not None  # one page read only TENANT_PAGE_READS entries
    found: list[str] = []
    while cursor is not None:
        page, cursor = await queue.tenant_page("acme", status=JobStatus.CANCELLED, limit=1, cursor=cursor)
        found += [j.id for j in page]
    assert found == [ids[0]]
    assert TENANT_PAGE_READS < 19


async def test_expired_records_leave_the_index_when_a_page_passes_them(queue: Queue) -> None:
    job = await queue.submit({"service": "echo", "customer_id": "acme"})
    for column in queue.keys.job_columns():
        await queue.client.hdel(column, job.id)
    assert await queue.tenant_page("acme") == ([], None)
    assert await queue.client.zcard(queue.keys.tenant_jobs("acme")) == 0


async def test_a_failed_job_goes_back_in_line_with_its_retries_renewed(queue: Queue) -> None:
    job = await queue.submit({"service": "echo", "max_retries": 0})
    session = await WorkerSession.open(queue, "w", Capabilities(services=["echo"]))
    try:
        claimed = await session.claim()
        assert claimed is not None
        await queue.fail(job.id, claimed.token, "boom", retryable=True)
        assert (await queue.require(job.id)).status is JobStatus.DEAD
        await queue.retry(job.id)
        back = await queue.require(job.id)
        assert back.status is JobStatus.PENDING and back.attempts == 0
        assert [e["message"] for e in back.errors] == ["boom"]
        assert (await queue.stats()).dead == 0
        again = await session.claim()
        assert again is not None and again.job.id == job.id
        with pytest.raises(JobNotRetryable):
            await queue.retry(job.id)  # running now
        events = [e.kind for e in await queue.events.replay(20) if e.job == job.id]
        assert "replayed" in events
    finally:
        await session.close()
