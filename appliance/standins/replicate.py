"""A Replicate predictions API stand-in.

    python -m appliance.standins.replicate --port 8302 [--api-key-file FILE]

POST /v1/predictions {version, input} and POST /v1/models/{owner}/{name}/predictions {input} -> 201 prediction;
GET /v1/predictions/{id}; POST /v1/predictions/{id}/cancel; GET /v1/account. Predictions go
starting -> processing (tqdm-style percentages in `logs`) -> succeeded | failed | canceled.
Inputs steer behaviour (see appliance.standins.jobsim); GET /__standin/stats counts calls.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from appliance.standins import process
from appliance.standins.jobsim import SIM_KEY, JobSim, SimJob, create_misbehaviour, unauthenticated

STATUS = {
    "queued": "starting",
    "running": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
}
NOT_FOUND = {"detail": "Not found.", "status": 404}


class Predictions:
    """The routes, over one simulated set of jobs."""

    def __init__(self) -> None:
        self.sim = JobSim()
        self.models: dict[str, str] = {}

    def view(self, request: web.Request, job: SimJob) -> dict[str, Any]:
        base = f"{request.scheme}://{request.host}/v1/predictions/{job.id}"
        now = datetime.now(UTC).isoformat()
        return {
            "id": job.id,
            "model": self.models.get(job.id, "standin/model"),
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

    async def create(self, request: web.Request, model: str) -> web.Response:
        body = await request.json()
        job_input = body.get("input")
        if not isinstance(job_input, dict):
            return web.json_response(
                {"title": "Invalid input", "detail": "input is required", "status": 422}, status=422
            )
        trouble = create_misbehaviour(job_input)
        if trouble is not None:
            return trouble
        job = self.sim.create(job_input)
        self.models[job.id] = model
        return web.json_response(self.view(request, job), status=201)

    async def create_versioned(self, request: web.Request) -> web.Response:
        return await self.create(request, "standin/model")

    async def create_for_model(self, request: web.Request) -> web.Response:
        return await self.create(request, f"{request.match_info['owner']}/{request.match_info['name']}")

    async def get(self, request: web.Request) -> web.Response:
        job = self.sim.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response(NOT_FOUND, status=404)
        self.sim.stats["polls"] += 1
        return web.json_response(self.view(request, job))

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.sim.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response(NOT_FOUND, status=404)
        self.sim.cancel(job)
        return web.json_response(self.view(request, job))

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "user", "username": "standin", "name": "Stand-in", "github_url": None}
        )


def make_app(api_key: str | None = None) -> web.Application:
    p = Predictions()
    app = web.Application(middlewares=[process.bearer_auth(api_key, "/v1/", unauthenticated)])
    app.add_routes(
        [
            web.post("/v1/predictions", p.create_versioned),
            web.post("/v1/models/{owner}/{name}/predictions", p.create_for_model),
            web.get("/v1/predictions/{id}", p.get),
            web.post("/v1/predictions/{id}/cancel", p.cancel),
            web.get("/v1/account", p.account),
            process.stats_route(lambda: p.sim.stats),
        ]
    )
    app[SIM_KEY] = p.sim
    return app


def main(argv: list[str] | None = None) -> None:
    args = process.parser("replicate", __doc__, 8302).parse_args(argv)
    process.run(make_app(process.read_key(args.api_key_file)), args)


if __name__ == "__main__":
    main()
