"""Two versions share one Redis during a rolling update: what the previous release wrote, this one reads and
finishes. The previous release's own code (commit d8fec38, run from `git archive` in a subprocess) writes the
records; this version's reader, lease client, housekeeper, event log and registry take them over. A second
test writes records by hand, byte for byte as that release's Lua did, for checkouts without the history."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.queue import JobStatus, Queue, QueueSettings
from appliance.queue.events import EventKind
from tests.versions import earlier_version

PREVIOUS = "d8fec38"
ROOT = Path(__file__).resolve().parents[2]

#: Run with the previous release on sys.path: it submits and runs jobs into every state a reader meets.
OLD_WRITER = """
import asyncio, json, sys
import appliance
from appliance.queue import Capabilities, Queue, QueueSettings

async def main(url):
    q = await Queue.connect(url, queue_name="compat", settings=QueueSettings(lease_ms=60000, retry_base_ms=0,
                                                                            retry_max_ms=0))
    ids = {}
    for name in ("done", "failed", "retried", "leased", "returned", "waiting"):
        ids[name] = (await q.submit({"service": "echo", "payload": {"n": name}, "max_retries": 2})).id
    session = await q.worker_session("old-w1", Capabilities(services=["echo"]), machine_id="old-m")
    tokens = {}
    for name in ("done", "failed", "retried", "leased", "returned"):
        c = await q.claim("old-w1", session.shapes)
        assert c.job.id == ids[name], (c.job.id, name)
        tokens[name] = c.token
    await q.progress(ids["leased"], tokens["leased"], 40, "halfway")
    await q.complete(ids["done"], tokens["done"], {"ok": 1})
    await q.fail(ids["failed"], tokens["failed"], "boom", retryable=False)
    await q.fail(ids["retried"], tokens["retried"], "flaky", retryable=True)
    await session.set_status({"state": "busy"})
    await session.close(deregister=False)
    await q.close()
    print(json.dumps({"ids": ids, "tokens": tokens, "code": appliance.__file__}))

asyncio.run(main(sys.argv[1]))
"""


async def test_this_version_takes_over_what_the_previous_release_wrote(
    redis_url: str, tmp_path: Path
) -> None:
    old = earlier_version(PREVIOUS, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(old)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", OLD_WRITER, redis_url],
        capture_output=True,
        text=True,
        env=env,
        # `python -c` puts the working directory first on sys.path: run where only the old code lies, or the
        # checkout's own appliance/ would be imported instead.
        cwd=old,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads(done.stdout.strip().splitlines()[-1])
    ids, tokens = written["ids"], written["tokens"]
    assert Path(written["code"]).is_relative_to(old), written["code"]  # the previous release wrote them

    q = await Queue.connect(
        redis_url, queue_name="compat", settings=QueueSettings(retry_base_ms=0, retry_max_ms=0)
    )
    try:
        await _read_and_finish(q, ids, tokens)
    finally:
        await q.close()


async def _read_and_finish(q: Queue, ids: dict[str, str], tokens: dict[str, str]) -> None:
    jobs = {name: await q.require(job_id) for name, job_id in ids.items()}
    assert {n: j.status for n, j in jobs.items()} == {
        "done": JobStatus.COMPLETED,
        "failed": JobStatus.FAILED,
        "retried": JobStatus.PENDING,
        "leased": JobStatus.RUNNING,
        "returned": JobStatus.CLAIMED,
        "waiting": JobStatus.PENDING,
    }
    assert jobs["done"].result == {"ok": 1} and jobs["done"].worker_id == "old-w1"
    assert jobs["done"].finished_at is not None and jobs["done"].created_at is not None
    assert jobs["failed"].error == "boom" and jobs["retried"].errors[0]["message"] == "flaky"
    assert jobs["leased"].worker_id == "old-w1" and jobs["leased"].progress["percent"] == 40
    stats = await q.stats()
    assert (stats.waiting, stats.active) == (2, 2) and stats.shapes[0].oldest_wait_s is not None

    kinds = [e.kind for e in await q.events.replay(100)]
    assert None not in kinds and EventKind.COMPLETED in kinds and EventKind.RETRYING in kinds
    assert await q.registry.registered_workers("old-m") == ["old-w1"]
    assert (await q.registry.read_workers(["old-w1"], await q.server_time_ms()))["old-w1"]["state"] == "busy"

    # The leases the old version granted are this version's to renew, finish and hand back.
    assert await q.heartbeat("old-w1", {ids["leased"]: tokens["leased"]}) == {ids["leased"]: "ok"}
    await q.complete(ids["leased"], tokens["leased"], "late")
    assert await q.leases.jobs_of_worker("old-w1") == [ids["returned"]]
    assert await q.return_jobs_of_worker("old-w1") == 1
    returned = await q.require(ids["returned"])
    assert returned.status is JobStatus.PENDING and returned.attempts == 1
    assert await q.cancel(ids["waiting"]) == "cancelled"


async def test_records_in_the_previous_format_are_read(queue: Queue) -> None:
    """Byte for byte what the previous release's submit.lua, claim.lua and includes/finish.lua stored."""
    k, client = queue.keys, queue.client
    shape = (await queue.submit({"service": "echo"})).shape  # a known shape, as the old submit registered it
    spec = json.dumps({"service": "echo", "payload": {"x": 1}, "id": "old-1", "shape": shape, "priority": 0})
    await client.hset(k.spec, "old-1", spec)
    await client.hset(k.meta, "old-1", f"{shape}|echo|1700000000000|0|3|0|1700000000000123")
    await client.hset(k.state, "old-1", "claimed")
    await client.hset(k.attempts, "old-1", "1")
    await client.hset(k.owner, "old-1", "a1b2c3.1|old|worker|1700000000500")  # a '|' in an unvalidated id
    await client.zadd(k.leases, {"old-1": 9_999_999_999_999})
    job = await queue.require("old-1")
    assert (job.status, job.worker_id, job.attempts) == (JobStatus.CLAIMED, "old|worker", 1)
    assert job.claimed_at is not None and int(job.claimed_at.timestamp() * 1000) == 1700000000500
    await queue.complete("old-1", "a1b2c3.1", {"r": 2})
    job = await queue.require("old-1")
    assert job.status is JobStatus.COMPLETED and job.result == {"r": 2} and job.worker_id == "old|worker"
    await client.hset(k.info, "old-1", "w|x|1700000000500|1700000000900")
    assert (await queue.require("old-1")).worker_id == "w|x"
