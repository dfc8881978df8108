"""A RunPod serverless stand-in.

    python -m appliance.standins.runpod --port 8303 [--api-key-file FILE]

POST /v2/{endpoint}/run {input} -> {id, status: IN_QUEUE}; GET /v2/{endpoint}/status/{id};
GET /v2/{endpoint}/stream/{id} (chunks produced since the last call); POST /v2/{endpoint}/cancel/{id};
GET /v2/{endpoint}/health. Statuses IN_QUEUE -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED, and
TIMED_OUT when the input's policy.executionTimeout (ms) passes. Inputs steer behaviour (appliance.standins.jobsim).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from appliance.standins import process
from appliance.standins.jobsim import SIM_KEY, JobSim, SimJob, create_misbehaviour, unauthenticated

STATUS = {
    "queued": "IN_QUEUE",
    "running": "IN_PROGRESS",
    "succeeded": "COMPLETED",
    "failed": "FAILED",
    "canceled": "CANCELLED",
    "timed_out": "TIMED_OUT",
}
NOT_FOUND = {"error": "request does not exist"}


def view(job: SimJob) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "status": STATUS[job.state],
        "delayTime": 50,
        "executionTime": 100 * job.step,
    }
    if job.state == "succeeded":
        out["output"] = job.output
    if job.state == "failed":
        out["error"] = job.error
    return out


def _time_out(job: SimJob) -> None:
    if job.state in ("queued", "running"):
        if job.task:
            job.task.cancel()
        job.state = "timed_out"


class Endpoint:
    """The routes of a serverless endpoint (any endpoint id), over one simulated set of jobs."""

    def __init__(self) -> None:
        self.sim = JobSim()
        self.streamed: dict[str, int] = {}

    def lookup(self, request: web.Request) -> SimJob | None:
        return self.sim.jobs.get(request.match_info["id"])

    async def run(self, request: web.Request) -> web.Response:
        body = await request.json()
        job_input = body.get("input")
        if not isinstance(job_input, dict):
            return web.json_response({"error": "input is required"}, status=400)
        trouble = create_misbehaviour(job_input)
        if trouble is not None:
            return trouble
        job = self.sim.create(job_input)
        limit_ms = (body.get("policy") or {}).get("executionTimeout")
        if limit_ms:
            asyncio.get_running_loop().call_later(float(limit_ms) / 1000, _time_out, job)
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def status(self, request: web.Request) -> web.Response:
        job = self.lookup(request)
        if job is None:
            return web.json_response(NOT_FOUND, status=404)
        self.sim.stats["polls"] += 1
        return web.json_response(view(job))

    async def stream(self, request: web.Request) -> web.Response:
        job = self.lookup(request)
        if job is None:
            return web.json_response(NOT_FOUND, status=404)
        start = self.streamed.get(job.id, 0)
        self.streamed[job.id] = len(job.stream)
        return web.json_response(
            {"status": STATUS[job.state], "stream": [{"output": chunk} for chunk in job.stream[start:]]}
        )

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.lookup(request)
        if job is None:
            return web.json_response(NOT_FOUND, status=404)
        self.sim.cancel(job)
        return web.json_response({"id": job.id, "status": STATUS[job.state]})

    async def health(self, request: web.Request) -> web.Response:
        jobs = self.sim.jobs.values()
        active = [j for j in jobs if j.state in ("queued", "running")]
        return web.json_response(
            {
                "jobs": {
                    "inQueue": sum(j.state == "queued" for j in active),
                    "inProgress": sum(j.state == "running" for j in active),
                    "completed": sum(j.state == "succeeded" for j in jobs),
                    "failed": sum(j.state == "failed" for j in jobs),
                },
                "workers": {"idle": 1, "running": len(active)},
            }
        )


def make_app(api_key: str | None = None) -> web.Application:
    e = Endpoint()
    app = web.Application(middlewares=[process.bearer_auth(api_key, "/v2/", unauthenticated)])
    app.add_routes(
        [
            web.post("/v2/{endpoint}/run", e.run),
            web.get("/v2/{endpoint}/status/{id}", e.status),
            web.get("/v2/{endpoint}/stream/{id}", e.stream),
            web.post("/v2/{endpoint}/cancel/{id}", e.cancel),
            web.get("/v2/{endpoint}/health", e.health),
            process.stats_route(lambda: e.sim.stats),
        ]
    )
    app[SIM_KEY] = e.sim
    return app


def main(argv: list[str] | None = None) -> None:
    args = process.parser("runpod", __doc__, 8303).parse_args(argv)
    process.run(make_app(process.read_key(args.api_key_file)), args)


if __name__ == "__main__":
    main()
