"""A fleet upgrades with jobs waiting in Redis: bodies the previous version (8011a77, which stored the spec's whole
dump) wrote are claimed by this version's worker path directly (not validated again), built exactly as validation
builds them, and finished. The previous version's own code writes them, from `git archive` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.queue import JobStatus, Queue
from appliance.queue.models import Job
from tests.queue.test_claim_decode import described
from tests.versions import earlier_version

PREVIOUS = "8011a77"
ROOT = Path(__file__).resolve().parents[2]

SPECS: dict[str, dict[str, Any]] = {
    "plain": {"service": "echo"},
    "rich": {
        "service": "echo",
        "payload": {"none": None, "empty": {}, "list": [], "text": 'q"\\'},
        "priority": 4,
        "requirements": {"gpu_memory_gb": 8, "models": ["b", "a"], "tags": ["t"], "isolation": "loose"},
        "customer_id": "acme",
        "max_retries": 1,
        "timeout_s": 30,
    },
    "child": {"service": "echo", "after": ["parent"], "on_parent_failure": "ignore"},
    "payload": {
        "service": "echo",
        "payload": {"n": 7, "none": None, "empty": {}},
        "priority": 2,
        "timeout_s": 30,
    },
}

OLD_WRITER = """
import asyncio, json, sys
import appliance
from appliance.queue import Queue

async def main(url, specs, queue_name):
    q = await Queue.connect(url, queue_name=queue_name)
    parent = await q.submit({"service": "echo", "id": "parent"})
    claimed = await q.claim("old-w1", [parent.shape])
    await q.complete(parent.id, claimed.token, {"p": 1})
    ids = {name: (await q.submit(spec)).id for name, spec in specs.items()}
    bodies = {name: await q.client.hget(q.keys.spec, job_id) for name, job_id in ids.items()}
    await q.close()
    print(json.dumps({"ids": ids, "bodies": bodies, "code": appliance.__file__}))

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]))
"""


async def written_by_the_previous_version(
    redis_url: str, tmp_path: Path, queue_name: str = "upgrade"
) -> dict[str, Any]:
    """The previous version's code submits `SPECS` (after a parent it completes): their ids and stored bodies."""
    old = earlier_version(PREVIOUS, tmp_path)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", OLD_WRITER, redis_url, json.dumps(SPECS), queue_name],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(old)},
        cwd=old,  # `python -c` puts the working directory first on sys.path: only the old code lies there
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(written["code"]).is_relative_to(old), written["code"]
    return written


async def test_bodies_the_previous_version_wrote_are_claimed_directly_and_finished(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = await written_by_the_previous_version(redis_url, tmp_path)
    bodies = written["bodies"]
    assert "requirements" in json.loads(bodies["plain"])  # the whole dump: every default written out
    assert json.loads(bodies["child"])["after"] == ["parent"]
    q = await Queue.connect(redis_url, queue_name="upgrade")
    validated: list[Any] = []
    real = Job.model_validate_json
    try:
        monkeypatch.setattr(
            Job, "model_validate_json", lambda data, **kw: validated.append(data) or real(data, **kw)
        )
        for name in ("payload", "plain", "rich", "child"):  # in the order they are in line (priority first)
            job_id = written["ids"][name]
            job = await q.require(job_id)
            _, claims, _ = await q.leases.finish_and_lease([], "new-w1", [job.shape], 1)
            assert [c.id for c in claims] == [job_id], name
            claim = claims[0]
            assert claim._body == bodies[name]
            built = claim.job
            assert validated == [], name  # read in the old form directly
            expected = real(bodies[name])
            expected.status, expected.attempts, expected.worker_id = JobStatus.CLAIMED, 1, "new-w1"
            assert described(built) == described(expected), name
            assert (claim.payload, claim.timeout_s, claim.customer_id, claim.after) == (
                expected.payload,
                expected.timeout_s,
                expected.customer_id,
                expected.after,
            )
            await q.complete(job_id, claim.token, {"ran": name})
            done = await q.require(job_id)
            assert done.status is JobStatus.COMPLETED and done.result == {"ran": name}
            # What a user reads is what the old version showed of the same submission.
            shown = done.model_dump(include={"service", "payload", "priority", "requirements", "customer_id"})
            assert shown == expected.model_dump(include=set(shown)), name
        assert (await q.require(written["ids"]["rich"])).requirements.models == ["a", "b"]
    finally:
        await q.close()
