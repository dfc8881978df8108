"""A RunPod serverless stand-in.

    python -m appliance.standins.runpod --port 8303 [--api-key-file FILE]

POST /v2/{endpoint}/run {input} -> {id, status: IN_QUEUE}; GET /v2/{endpoint}/status/{id};
GET /v2/{endpoint}/stream/{id} (chunks produced since the last call); POST /v2/{endpoint}/cancel/{id};
GET /v2/{endpoint}/health. Statuses IN_QUEUE -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED, and
TIMED_OUT when the input's policy.executionTimeout (ms) passes. Inputs steer behaviour (appliance.standins.jobsim).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from appliance.standins.jobsim import SIM_KEY, JobSim, SimJob, check_auth, create_misbehaviour, read_key
from appliance.standins.process import serve

STATUS = {
    "queued": "IN_QUEUE",
    "running": "IN_PROGRESS",
    "succeeded": "COMPLETED",
    "failed": "FAILED",
    "canceled": "CANCELLED",
    "timed_out": "TIMED_OUT",
}


def make_app(api_key: str | None = None) -> web.Application:
    sim = JobSim()
    streamed: dict[str, int] = {}

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

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v2/"):
            denied = check_auth(request, api_key)
            if denied is not None:
                return denied
        return await handler(request)

    routes = web.RouteTableDef()

    def lookup(request: web.Request) -> SimJob | None:
        return sim.jobs.get(request.match_info["id"])

    @routes.post("/v2/{endpoint}/run")
    async def run(request: web.Request) -> web.Response:
        body = await request.json()
        job_input = body.get("input")
        if not isinstance(job_input, dict):
            return web.json_response({"error": "input is required"}, status=400)
        trouble = create_misbehaviour(job_input)
        if trouble is not None:
            return trouble
        job = sim.create(job_input)
        limit_ms = (body.get("policy") or {}).get("executionTimeout")
        if limit_ms:
            asyncio.get_running_loop().call_later(float(limit_ms) / 1000, _time_out, job)
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    def _time_out(job: SimJob) -> None:
        if job.state in ("queued", "running"):
            if job.task:
                job.task.cancel()
            job.state = "timed_out"

    @routes.get("/v2/{endpoint}/status/{id}")
    async def status(request: web.Request) -> web.Response:
        job = lookup(request)
        if job is None:
            return web.json_response({"error": "request does not exist"}, status=404)
        sim.stats["polls"] += 1
        return web.json_response(view(job))

    @routes.get("/v2/{endpoint}/stream/{id}")
    async def stream(request: web.Request) -> web.Response:
        job = lookup(request)
        if job is None:
            return web.json_response({"error": "request does not exist"}, status=404)
        start = streamed.get(job.id, 0)
        streamed[job.id] = len(job.stream)
        return web.json_response(
            {"status": STATUS[job.state], "stream": [{"output": chunk} for chunk in job.stream[start:]]}
        )

    @routes.post("/v2/{endpoint}/cancel/{id}")
    async def cancel(request: web.Request) -> web.Response:
        job = lookup(request)
        if job is None:
            return web.json_response({"error": "request does not exist"}, status=404)
        sim.cancel(job)
        return web.json_response({"id": job.id, "status": STATUS[job.state]})

    @routes.get("/v2/{endpoint}/health")
    async def health(request: web.Request) -> web.Response:
        active = [j for j in sim.jobs.values() if j.state in ("queued", "running")]
        return web.json_response(
            {
                "jobs": {
                    "inQueue": sum(j.state == "queued" for j in active),
                    "inProgress": sum(j.state == "running" for j in active),
                    "completed": sum(j.state == "succeeded" for j in sim.jobs.values()),
                    "failed": sum(j.state == "failed" for j in sim.jobs.values()),
                },
                "workers": {"idle": 1, "running": len(active)},
            }
        )

    @routes.get("/__standin/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(sim.stats)

    app = web.Application(middlewares=[auth])
    app.add_routes(routes)
    app[SIM_KEY] = sim
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.standins.runpod",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8303)
    parser.add_argument("--api-key-file", default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(make_app(read_key(args.api_key_file)), args.host, args.port))


if __name__ == "__main__":
    main()
