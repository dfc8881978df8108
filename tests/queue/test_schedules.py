"""Repeating jobs on a real Redis: cron and interval ticks, each submitted once across racing housekeepers,
clock jumps, a housekeeper dying between its two steps, a Redis restart, catch-up windows, pause and resume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.localredis import LocalRedis
from appliance.queue import Queue
from appliance.queue.cron import Cron, CronError
from appliance.queue.schedules import DuplicateSchedule, InvalidSchedule, ScheduleNotFound

T0 = 1_800_000_000_000  # a round epoch ms well in the future: ticks depend only on the clock the tests pass
JOB = {"service": "echo", "payload": {"n": 1}}


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", "2026-11-27T10:00:30", "2026-11-27T10:01:00"),
        ("*/15 9-17 * * mon-fri", "2026-11-27T17:50:00", "2026-11-30T09:00:00"),  # Friday evening -> Monday
        ("0 0 29 2 *", "2026-11-27T00:00:00", "2028-02-29T00:00:00"),  # the next leap day
        ("0 12 13 * 5", "2026-11-27T00:00:00", "2026-11-27T12:00:00"),  # both day fields: either matches
        ("30 4 1,15 * *", "2026-11-15T04:30:00", "2026-12-01T04:30:00"),  # strictly after
        ("0 0 * * 7", "2026-11-27T00:00:00", "2026-11-29T00:00:00"),  # 7 is Sunday
        ("@hourly", "2026-12-31T23:00:00", "2027-01-01T00:00:00"),
        ("5-10/5 * * jan *", "2026-11-27T00:00:00", "2027-01-01T00:05:00"),
    ],
)
def test_cron_next_tick(expression: str, after: str, expected: str) -> None:
    assert Cron.parse(expression).next_after(utc_ms(after)) == utc_ms(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("*/0 * * * *", "minute: step '0' must be a positive number"),
        ("5-1 * * * *", "minute: range '5-1' runs backwards"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_cron_errors_name_the_field(expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Cron.parse(expression)


async def jobs_of(queue: Queue, prefix: str) -> list[str]:
    """Every job id of a schedule, from the queue's state column."""
    ids = [str(i) for i in await queue.client.hkeys(queue.keys.state)]
    return sorted(i for i in ids if i.startswith(prefix + ":"))


async def test_add_list_pause_resume_remove(queue: Queue) -> None:
    added = await queue.schedules.add({"id": "nightly", "cron": "0 3 * * *", "job": JOB})
    assert added.next_ms is not None and added.next_ms > await queue.server_time_ms()
    with pytest.raises(DuplicateSchedule, match="'nightly' exists already"):
        await queue.schedules.add({"id": "nightly", "every_s": 60, "job": JOB})
    replaced = await queue.schedules.add({"id": "nightly", "every_s": 60, "job": JOB}, replace=True)
    assert replaced.every_s == 60 and replaced.cron is None
    paused = await queue.schedules.pause("nightly")
    assert paused.paused and (await queue.schedules.get("nightly")).next_ms is None
    assert (await queue.schedules.materialise(now_ms=T0 * 10)).submitted == 0  # paused: nothing due
    resumed = await queue.schedules.resume("nightly")
    assert not resumed.paused and resumed.next_ms is not None
    assert [s.id for s in await queue.schedules.list()] == ["nightly"]
    await queue.schedules.remove("nightly")
    assert await queue.schedules.list() == []
    with pytest.raises(ScheduleNotFound):
        await queue.schedules.remove("nightly")
    with pytest.raises(ScheduleNotFound):
        await queue.schedules.pause("nightly")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"id": "s", "job": JOB}, "exactly one of cron and every_s"),
        ({"id": "s", "job": JOB, "cron": "* * * * *", "every_s": 5}, "exactly one of cron and every_s"),
        ({"id": "s", "job": {**JOB, "id": "fixed"}, "every_s": 5}, "job.id"),
        ({"id": "s", "job": JOB, "cron": "99 * * * *"}, "cron: .*minute: 99"),
        ({"id": "bad id", "job": JOB, "every_s": 5}, "id: String should match"),
        ({"id": "s", "job": {"service": "echo", "priority": 5000}, "every_s": 5}, "job.priority"),
    ],
)
async def test_invalid_schedules_name_the_field(queue: Queue, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        await queue.schedules.add(spec)
    assert await queue.schedules.list() == []


async def test_interval_ticks_are_submitted_once_each(queue: Queue) -> None:
    await queue.schedules.add({"id": "tick", "every_s": 10, "start_at_ms": T0, "job": JOB})
    assert (await queue.schedules.materialise(now_ms=T0 - 1)).submitted == 0
    first = await queue.schedules.materialise(now_ms=T0)
    assert (first.submitted, first.next_in_ms) == (1, 10_000)
    assert (await queue.schedules.materialise(now_ms=T0 + 5_000)).submitted == 0
    assert (await queue.schedules.materialise(now_ms=T0 + 10_000)).submitted == 1
    assert await jobs_of(queue, "tick") == [f"tick:{T0}", f"tick:{T0 + 10_000}"]
    job = await queue.get(f"tick:{T0}")
    assert job is not None and job.service == "echo" and job.payload == {"n": 1}


async def test_racing_housekeepers_and_a_clock_jump_run_each_tick_once(
    queue: Queue, make_queue: Callable[..., Any]
) -> None:
    others = [await make_queue() for _ in range(3)]
    await queue.schedules.add({"id": "race", "every_s": 1, "start_at_ms": T0, "job": JOB})
    totals = 0
    for now in (T0, T0 + 500, T0 + 1_000, T0 + 6_000, T0 + 6_000, T0 + 7_000):  # 5 s jump after T0 + 1 s
        results = await asyncio.gather(*(q.schedules.materialise(now_ms=now) for q in [queue, *others] * 3))
        totals += sum(r.submitted for r in results)
    expected = [f"race:{T0 + s * 1000}" for s in range(8)]
    assert await jobs_of(queue, "race") == sorted(expected)
    assert totals == len(expected)


async def test_a_housekeeper_dying_between_submit_and_advance_neither_loses_nor_doubles(queue: Queue) -> None:
    await queue.schedules.add({"id": "crash", "every_s": 60, "start_at_ms": T0, "job": JOB})
    # The dead housekeeper's first step: the tick's job went in, the schedule was not moved on.
    await queue.submit({**JOB, "id": f"crash:{T0}"})
    result = await queue.schedules.materialise(now_ms=T0 + 1)
    assert (result.submitted, result.duplicates) == (0, 1)
    assert (await queue.schedules.get("crash")).next_ms == T0 + 60_000
    assert await jobs_of(queue, "crash") == [f"crash:{T0}"]


async def test_missed_ticks_catch_up_within_the_window_and_skip_older_ones(queue: Queue) -> None:
    await queue.schedules.add({"id": "late", "every_s": 1, "start_at_ms": T0, "catch_up_s": 2.5, "job": JOB})
    result = await queue.schedules.materialise(now_ms=T0 + 10_000)
    assert (result.submitted, result.skipped) == (3, 1)  # 8, 9 and 10 s: within 2.5 s of now
    assert await jobs_of(queue, "late") == [f"late:{T0 + s * 1000}" for s in (8, 9, 10)]


async def test_a_paused_schedule_resumes_from_now_without_catching_up(queue: Queue) -> None:
    now = await queue.server_time_ms()
    await queue.schedules.add({"id": "p", "every_s": 1, "start_at_ms": now - 10_000, "job": JOB})
    await queue.schedules.pause("p")
    assert (await queue.schedules.materialise(now_ms=now)).submitted == 0
    resumed = await queue.schedules.resume("p")
    assert resumed.next_ms is not None and resumed.next_ms > now  # the ten ticks missed while paused are gone
    result = await queue.schedules.materialise(now_ms=resumed.next_ms)
    assert (result.submitted, result.skipped) == (1, 0)
    assert await jobs_of(queue, "p") == [f"p:{resumed.next_ms}"]


async def test_cron_schedule_materialises_on_its_minutes(queue: Queue) -> None:
    start = utc_ms("2027-03-01T09:59:00")
    await queue.schedules.add({"id": "cron", "cron": "*/30 10 * * *", "job": JOB})
    await queue.client.zadd(queue.keys.schedule_due, {"cron": start})  # as if created the minute before
    await queue.schedules.materialise(now_ms=utc_ms("2027-03-01T10:31:00"))
    ticks = [f"cron:{utc_ms(t)}" for t in ("2027-03-01T10:00:00", "2027-03-01T10:30:00")]
    # The stored tick (09:59) is not a cron minute: it is submitted as due, then the cron ticks follow it.
    assert await jobs_of(queue, "cron") == sorted([f"cron:{start}", *ticks])
    assert (await queue.schedules.get("cron")).next_ms == utc_ms("2027-03-02T10:00:00")


async def test_ticks_survive_a_redis_restart_without_running_twice(tmp_path: Path) -> None:
    server = LocalRedis(
        extra_args=["--appendonly", "yes", "--appendfsync", "always"], workdir=tmp_path
    ).start()
    try:
        q = await Queue.connect(server.url)
        await q.schedules.add({"id": "r", "every_s": 1, "start_at_ms": T0, "job": JOB})
        assert (await q.schedules.materialise(now_ms=T0 + 2_000)).submitted == 3
        await q.close()
        await asyncio.to_thread(server.restart)  # kill -9, then start from the append-only file
        q = await Queue.connect(server.url)
        again = await q.schedules.materialise(now_ms=T0 + 2_000)
        assert (again.submitted, again.duplicates) == (0, 0)  # the schedule had moved on before the crash
        assert (await q.schedules.materialise(now_ms=T0 + 3_000)).submitted == 1
        assert await jobs_of(q, "r") == [f"r:{T0 + s * 1000}" for s in range(4)]
        await q.close()
    finally:
        server.cleanup()


async def test_a_delayed_job_waits_then_ranks_from_its_start(queue: Queue) -> None:
    from appliance.queue import Capabilities, JobStatus, WorkerSession

    session = await WorkerSession.open(queue, "w-delay", Capabilities(services=["echo"]))
    try:
        later = await queue.submit({**JOB, "id": "later", "delay_s": 3600})
        assert later.next_attempt_at is not None
        stored = await queue.get("later")
        assert (
            stored is not None and stored.status is JobStatus.PENDING and stored.next_attempt_at is not None
        )
        assert await session.claim() is None  # not before its time, reap or no reap
        await queue.reap(force=True)
        assert await session.claim() is None
        assert await queue.cancel("later") == "cancelled"  # a delayed job cancels at once

        now = await queue.server_time_ms()
        await queue.submit({**JOB, "id": "soon", "run_at": (now + 300) / 1000})
        await queue.submit({**JOB, "id": "now"})
        # The session registered as idle above: the claim asks Redis once the wake-up has come (through the hub).
        assert await session.wait_for_work(5)
        first = await session.claim()
        assert first is not None and first.job.id == "now"
        await queue.complete(first.job.id, first.token, {})

        async def due() -> Any:
            await queue.reap(force=True)
            return await session.claim()

        claimed = None
        for _ in range(200):
            if (claimed := await due()) is not None:
                break
            await asyncio.sleep(0.02)
        assert claimed is not None and claimed.job.id == "soon"
        record = await queue.get("soon")
        assert record is not None and record.claimed_at is not None
        assert (
            record.claimed_at.timestamp() * 1000 >= now + 300
        )  # never before its start, by the server clock
    finally:
        await session.close()


async def test_a_delayed_job_ranks_behind_jobs_submitted_before_it_falls_due(queue: Queue) -> None:
    from appliance.queue import Capabilities, WorkerSession

    now = await queue.server_time_ms()
    await queue.submit({**JOB, "id": "early-but-delayed", "run_at": (now - 1) / 1000})  # due at once
    await queue.submit({**JOB, "id": "delayed", "delay_s": 0.2})
    await queue.client.zadd(queue.keys.delayed, {"delayed": now - 1})  # fall due without waiting
    await queue.submit({**JOB, "id": "meanwhile"})
    await queue.reap(force=True)
    session = await WorkerSession.open(queue, "w-rank", Capabilities(services=["echo"]))
    try:
        order = []
        while (claimed := await session.claim()) is not None:
            order.append(claimed.job.id)
        assert order == ["early-but-delayed", "meanwhile", "delayed"]  # ranked from its start, not submission
    finally:
        await session.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"run_at": "2030-01-01T00:00:00", "delay_s": 5}, "at most one of run_at and delay_s"),
        ({"delay_s": -1}, "delay_s"),
        ({"run_at": "tomorrow"}, "run_at"),
    ],
)
async def test_bad_start_times_name_the_field(queue: Queue, extra: dict[str, Any], message: str) -> None:
    from appliance.queue import InvalidJob

    with pytest.raises(InvalidJob, match=message):
        await queue.submit({**JOB, **extra})


async def test_a_worker_of_several_queues_materialises_the_schedules_of_each(
    make_queue: Callable[..., Any],
) -> None:
    from appliance.queue.multi import QueueSet

    first = await make_queue()
    second = Queue(first.client, queue_name="second")  # several queues share one client in a worker
    await first.schedules.add({"id": "a", "every_s": 10, "start_at_ms": T0, "job": JOB})
    await second.schedules.add({"id": "b", "every_s": 4, "start_at_ms": T0, "job": JOB})
    both = QueueSet([first, second])
    result = await both.schedules.materialise(now_ms=T0)
    assert (result.submitted, result.next_in_ms) == (2, 4_000)  # the soonest of the two queues
    assert await jobs_of(first, "a") == [f"a:{T0}"] and await jobs_of(second, "b") == [f"b:{T0}"]
    reaped = await both.reap(force=True)
    assert reaped.ran and reaped.requeued == 0
