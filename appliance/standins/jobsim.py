"""Simulated remote jobs shared by the Replicate and RunPod stand-ins.

A job's `input` steers it: {"steps": N (3), "step_delay": seconds (0.05), "fail": "message", "hang": true,
"standin": "429"|"500"|"malformed"} (the last one shapes the create call's response instead).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SimJob:
    id: str
    input: dict[str, Any]
    state: str = "queued"  # queued | running | succeeded | failed | canceled
    step: int = 0
    steps: int = 3
    logs: list[str] = field(default_factory=list)
    output: Any = None
    error: str | None = None
    stream: list[Any] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class JobSim:
    def __init__(self) -> None:
        self.jobs: dict[str, SimJob] = {}
        self.stats = {"created": 0, "cancels": 0, "polls": 0}

    def create(self, job_input: dict[str, Any]) -> SimJob:
        job = SimJob(id=uuid.uuid4().hex[:16], input=job_input, steps=int(job_input.get("steps", 3)))
        self.jobs[job.id] = job
        self.stats["created"] += 1
        job.task = asyncio.create_task(self._run(job))
        return job

    async def _run(self, job: SimJob) -> None:
        delay = float(job.input.get("step_delay", 0.05))
        await asyncio.sleep(delay)  # time spent in the queue
        job.state = "running"
        if job.input.get("hang"):
            await asyncio.Event().wait()
        for step in range(1, job.steps + 1):
            await asyncio.sleep(delay)
            job.step = step
            percent = int(100 * step / job.steps)
            job.logs.append(f"{percent:3d}%|{'#' * (percent // 10):<10}| {step}/{job.steps} [00:01<00:01]")
            job.stream.append({"progress": percent, "step": step})
        if job.input.get("fail"):
            job.state, job.error = "failed", str(job.input["fail"])
            job.logs.append(f"Traceback (most recent call last):\nRuntimeError: {job.error}")
            return
        job.output = {"echo": {k: v for k, v in job.input.items() if k not in ("steps", "step_delay")}}
        job.state = "succeeded"

    def cancel(self, job: SimJob) -> None:
        self.stats["cancels"] += 1
        if job.state in ("queued", "running"):
            if job.task:
                job.task.cancel()
            job.state = "canceled"


#: Where the stand-in apps keep their JobSim (tests read its stats and jobs).
SIM_KEY: web.AppKey[JobSim] = web.AppKey("sim", JobSim)


def create_misbehaviour(job_input: dict[str, Any]) -> web.Response | None:
    """The response a create call gets when the input asks for trouble, else None."""
    mode = job_input.get("standin")
    if mode == "429":
        return web.json_response(
            {"title": "Too Many Requests", "detail": "Request was throttled.", "status": 429},
            status=429,
            headers={"retry-after": "3"},
        )
    if mode == "500":
        return web.json_response({"detail": "Internal server error"}, status=500)
    if mode == "malformed":
        return web.Response(text="<html>bad gateway</html>", content_type="text/html")
    return None


def unauthenticated() -> web.Response:
    """The 401 Replicate and RunPod send for a missing or wrong bearer key."""
    return web.json_response(
        {
            "title": "Unauthenticated",
            "detail": "You did not pass a valid authentication token",
            "status": 401,
        },
        status=401,
    )
