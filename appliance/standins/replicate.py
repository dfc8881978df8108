"""A Replicate predictions API stand-in.

    python -m appliance.standins.replicate --port 8302 [--api-key-file FILE]

POST /v1/predictions {version, input} and POST /v1/models/{owner}/{name}/predictions {input} -> 201 prediction;
GET /v1/predictions/{id}; POST /v1/predictions/{id}/cancel; GET /v1/account. Predictions go
starting -> processing (tqdm-style percentages in `logs`) -> succeeded | failed | canceled.
Inputs steer behaviour (see appliance.standins.jobsim); GET /__standin/stats counts calls.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from appliance.standins.jobsim import SIM_KEY, JobSim, SimJob, check_auth, create_misbehaviour, read_key
from appliance.standins.process import serve

STATUS = {
    "queued": "starting",
    "running": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
}


def make_app(api_key: str | None = None) -> web.Application:
    sim = JobSim()
    models: dict[str, str] = {}

    def view(request: web.Request, job: SimJob) -> dict[str, Any]:
        base = f"{request.scheme}://{request.host}/v1/predictions/{job.id}"
        now = datetime.now(UTC).isoformat()
        return {
            "id": job.id,
            "model": models.get(job.id, "standin/model"),
            "version": "standin-version",
            "input": job.input,
            "logs": "\n".join(job.logs),
            "output": job.output,
            "error": job.error,
            "status": STATUS[job.state],
            "created_at": now,
            "data_removed": False,
            "started_at": now if job.state != "queued" else None,
            "completed_at": now if job.state in ("succeeded", "failed", "canceled") else None,
            "metrics": {"predict_time": 0.1 * job.step} if job.state == "succeeded" else {},
            "urls": {"get": base, "cancel": base + "/cancel", "web": base},
        }

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            denied = check_auth(request, api_key)
            if denied is not None:
                return denied
        return await handler(request)

    routes = web.RouteTableDef()

    async def create(request: web.Request, model: str) -> web.Response:
        body = await request.json()
        job_input = body.get("input")
        if not isinstance(job_input, dict):
            return web.json_response(
                {"title": "Invalid input", "detail": "input is required", "status": 422}, status=422
            )
        trouble = create_misbehaviour(job_input)
        if trouble is not None:
            return trouble
        job = sim.create(job_input)
        models[job.id] = model
        return web.json_response(view(request, job), status=201)

    @routes.post("/v1/predictions")
    async def create_versioned(request: web.Request) -> web.Response:
        return await create(request, "standin/model")

    @routes.post("/v1/models/{owner}/{name}/predictions")
    async def create_for_model(request: web.Request) -> web.Response:
        return await create(request, f"{request.match_info['owner']}/{request.match_info['name']}")

    @routes.get("/v1/predictions/{id}")
    async def get(request: web.Request) -> web.Response:
        job = sim.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        sim.stats["polls"] += 1
        return web.json_response(view(request, job))

    @routes.post("/v1/predictions/{id}/cancel")
    async def cancel(request: web.Request) -> web.Response:
        job = sim.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        sim.cancel(job)
        return web.json_response(view(request, job))

    @routes.get("/v1/account")
    async def account(request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "user", "username": "standin", "name": "Stand-in", "github_url": None}
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
        prog="python -m appliance.standins.replicate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8302)
    parser.add_argument("--api-key-file", default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(make_app(read_key(args.api_key_file)), args.host, args.port))


if __name__ == "__main__":
    main()
