"""Job dependencies through real `appliance worker` processes and the real CLI: a chain A -> B -> C runs in order
and each child's connector gets its parents' results (the echo connector hands them back); a worker killed with
SIGKILL while it runs a parent: the reaper puts the parent back, another worker completes it, and the child is
released and completes exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

from appliance.queue import JobStatus
from appliance.queue.events import EventKind
from tests.worker.test_worker_process import Harness, completed_events, job_in, running


def cli(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in h.env.items() if k != "NOTIFY_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "appliance", "job", *args], capture_output=True, text=True, env=env, timeout=60
    )


def submit(h: Harness, *args: str) -> str:
    out = cli(h, "submit", "--service", "echo", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


async def test_a_chain_runs_in_order_and_children_see_their_parents_results(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    a = submit(harness, "--payload", '{"step": "a", "delay": 0.3}')
    b = submit(harness, "--payload", '{"step": "b"}', "--after", a)
    c = submit(harness, "--payload", '{"step": "c"}', "--after", b, "--after", a)
    shown = cli(harness, "get", c)
    assert shown.returncode == 0, shown.stderr
    assert f"blocked (waiting on 2 of 2 parents: {b}, {a})" in shown.stdout
    stats = cli(harness, "stats")
    assert "2 waiting for parents" in stats.stdout, stats.stdout
    worker = harness.start("--slot", "echo0", "--concurrency", "4")
    await worker.ready()
    done = await job_in(q, c, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
    assert done.status is JobStatus.COMPLETED, done.errors
    jobs = {j: await q.get(j) for j in (a, b, c)}
    assert all(job is not None and job.status is JobStatus.COMPLETED for job in jobs.values())
    # Each started after its parents finished (the record's times are the server's clock).
    ja, jb, jc = jobs[a], jobs[b], jobs[c]
    assert ja and jb and jc and ja.finished_at and jb.claimed_at and jb.finished_at and jc.claimed_at
    assert ja.finished_at <= jb.claimed_at and jb.finished_at <= jc.claimed_at
    assert jb.result["parents"] == {a: ja.result}
    assert jc.result["parents"] == {b: jb.result, a: ja.result}
    assert jc.result["parents"][b]["parents"][a]["echo"]["step"] == "a"
    assert "Traceback" not in worker.log


async def test_kill_9_of_a_worker_running_a_parent_releases_the_child_once(harness: Harness) -> None:
    q = harness.queue
    assert q is not None
    first = harness.start("--slot", "echo0")
    await first.ready()
    parent = submit(harness, "--payload", '{"delay": 5}')  # outlasts the child's submit
    child = submit(harness, "--payload", '{"step": "child"}', "--after", parent)
    await running(q, parent)
    first.kill()
    assert (await q.get(child)).status is JobStatus.BLOCKED  # type: ignore[union-attr]
    second = harness.start("--slot", "echo1")
    await second.ready()
    done = await job_in(q, child, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
    assert done.status is JobStatus.COMPLETED
    got = await q.get(parent)
    assert got is not None and got.attempts == 2 and got.worker_id and got.worker_id.endswith("echo1")
    assert done.result["parents"] == {parent: got.result}
    assert await completed_events(q, parent) == 1 and await completed_events(q, child) == 1
    events = await q.events.window(0, 10**9)
    assert sum(1 for e in events if e.kind is EventKind.UNBLOCKED and e.job == child) == 1
    assert json.loads(cli(harness, "get", child, "--json").stdout)["status"] == "completed"
