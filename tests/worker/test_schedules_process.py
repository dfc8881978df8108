"""Repeating jobs as users run them: `appliance schedule` as a subprocess, and real `appliance worker` processes
whose housekeepers submit every tick once between them."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

from appliance.queue import JobStatus
from appliance.queue.events import EventKind
from tests.cliproc import run_appliance
from tests.worker.test_worker_process import Harness, eventually


def schedule_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_appliance(url, "schedule", *args)


def test_schedule_cli_round_trip_and_one_line_errors(redis_url: str) -> None:
    added = schedule_cli(redis_url, "add", "nightly", "--cron", "0 3 * * *", "--service", "echo", "--json")
    assert added.returncode == 0, added.stderr
    [record] = json.loads(added.stdout)
    assert record["cron"] == "0 3 * * *" and record["job"]["service"] == "echo" and record["next_ms"]
    again = schedule_cli(redis_url, "add", "nightly", "--every", "60", "--service", "echo")
    assert again.returncode == 2 and again.stderr.strip().endswith(
        "exists already (use replace to change it)"
    )
    bad = schedule_cli(redis_url, "add", "x", "--cron", "61 * * * *", "--service", "echo")
    assert bad.returncode == 2 and "minute: 61 is outside 0-59" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "nightly" in schedule_cli(redis_url, "pause", "nightly").stdout
    listed = schedule_cli(redis_url, "list")
    assert listed.returncode == 0 and "paused" in listed.stdout
    assert schedule_cli(redis_url, "rm", "nightly").returncode == 0
    missing = schedule_cli(redis_url, "resume", "nightly")
    assert (
        missing.returncode == 3 and missing.stderr.strip() == "appliance: error: schedule 'nightly' not found"
    )


async def test_two_workers_run_every_tick_of_a_schedule_once(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    workers = [harness.start("--connector", "echo", "--index", str(i)) for i in range(2)]
    for worker in workers:
        await worker.ready()
    await q.schedules.add({"id": "beat", "every_s": 1, "job": {"service": "echo", "payload": {"n": 1}}})

    async def three_ticks_done() -> list[str] | None:
        ids = [str(i) for i in await q.client.hkeys(q.keys.state) if str(i).startswith("beat:")]
        done = [i for i in ids if (job := await q.get(i)) is not None and job.status is JobStatus.COMPLETED]
        return done if len(done) >= 3 else None

    done = await eventually(three_ticks_done, "three ticks of the schedule completed")
    await q.schedules.remove("beat")
    ticks = sorted(int(i.split(":")[1]) for i in done)
    assert all(b - a == 1000 for a, b in zip(ticks, ticks[1:], strict=False)), (
        ticks
    )  # consecutive, none missed
    completions = Counter(
        event.job
        for event in await q.events.replay(10_000)
        if event.kind is EventKind.COMPLETED and event.job.startswith("beat:")
    )
    assert completions and set(completions.values()) == {1}, completions  # each tick completed once
