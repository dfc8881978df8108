"""The aiohttp application: routes, and the middleware every request passes (metrics, problem details). Each
/v1/ handler starts with `await caller(request, scope)`: the API key, its rate and its scope."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from appliance.api import fleet, jobs, live, ws
from appliance.api.context import API_KEY, Api, api_of
from appliance.api.problems import ProblemError, render

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def served(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as RFC 9457 problem details (the handlers' own, aiohttp's 404 and 405, Redis going away),
    and every answer counted and timed by route. One middleware, not two: each costs every request a coroutine
    layer."""
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except ProblemError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            status = exc.status
            if status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
            response = render(status, exc.text or exc.reason, headers)
        except RedisError as exc:
            log.warning("%s %s: Redis: %s", request.method, request.path, exc)
            detail = f"the job store is unavailable ({type(exc).__name__}); try again"
            response = render(503, detail, {"Retry-After": "1"})
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        api_of(request).metrics.observe(route, request.method, status, time.perf_counter() - started)


def make_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[served])
    app[API_KEY] = api
    r = app.router
    r.add_post("/v1/jobs", jobs.submit)
    r.add_get("/v1/jobs", jobs.list_jobs)
    r.add_post("/v1/jobs/batch", jobs.submit_batch)
    r.add_get("/v1/jobs/{id}", jobs.get_job)
    r.add_delete("/v1/jobs/{id}", jobs.cancel_job)
    r.add_post("/v1/jobs/{id}/retry", jobs.retry_job)
    r.add_get("/v1/jobs/{id}/outputs/{name}", jobs.output)
    r.add_get("/v1/jobs/{id}/events", live.job_events)
    r.add_get("/v1/ws", ws.websocket)
    r.add_get("/v1/webhooks/dead", jobs.dead_webhooks)
    r.add_get("/v1/webhooks/secret", jobs.webhook_secret)
    r.add_post("/v1/webhooks/secret", jobs.webhook_secret)
    r.add_get("/v1/stats", fleet.stats)
    r.add_get("/v1/machines", fleet.machines)
    r.add_get("/v1/pools", fleet.pools)
    r.add_get("/healthz", fleet.healthz)
    r.add_get("/readyz", fleet.readyz)
    r.add_get("/metrics", fleet.metrics)
    r.add_get("/openapi.json", fleet.openapi)
    return app
