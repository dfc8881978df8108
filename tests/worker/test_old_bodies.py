"""A fleet upgrades with jobs waiting: a real `appliance worker` of this version runs the jobs the previous
version (8011a77) submitted, whose stored bodies hold the spec's whole dump (issue 14 stores only what differs
from the defaults), with their payloads as submitted."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.queue import JobStatus
from tests.queue.test_stored_body_upgrade import SPECS, written_by_the_previous_version
from tests.worker.test_worker_process import Harness, job_in


async def test_a_new_worker_runs_the_jobs_the_previous_version_submitted(
    harness: Harness, tmp_path: Path
) -> None:
    q = harness.queue
    assert q is not None
    written = await written_by_the_previous_version(harness.redis_url, tmp_path / "old", "default")
    assert "requirements" in json.loads(written["bodies"]["plain"])  # the old, whole form
    worker = harness.start("--connector", "echo", "--index", "0")
    await worker.ready()
    for name in (
        "plain",
        "child",
        "payload",
    ):  # what an echo worker serves (the rich job asks for a GPU and a customer)
        done = await job_in(q, written["ids"][name], JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD)
        assert done.status is JobStatus.COMPLETED, (name, done.errors)
        assert done.after == SPECS[name].get("after", []) and done.service == "echo"
    done = await q.require(written["ids"]["payload"])
    assert (
        done.result["echo"] == SPECS["payload"]["payload"] and done.timeout_s == 30.0 and done.priority == 2
    )
