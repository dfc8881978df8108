"""Read-only fleet views for admin keys (/v1/stats, /v1/machines, /v1/pools), the probes (/healthz, /readyz),
/metrics and /openapi.json. The probes and /metrics need no key: they say nothing about any tenant's jobs."""

from __future__ import annotations

from collections import Counter

from aiohttp import web
from redis.exceptions import RedisError

from appliance.api.context import api_of, caller
from appliance.api.keys import Scope
from appliance.api.openapi import document
from appliance.api.problems import ProblemError, json_response

DEFAULT_POOL = "standard"


async def stats(request: web.Request) -> web.Response:
    api = api_of(request)
    await caller(request, Scope.ADMIN)
    return json_response((await api.queue.stats()).model_dump(mode="json"))


async def machines(request: web.Request) -> web.Response:
    api = api_of(request)
    await caller(request, Scope.ADMIN)
    records = await api.queue.registry.machines()
    return json_response(
        {"machines": [{"machine_id": r.machine_id, "info": r.info, "status": r.status} for r in records]}
    )


async def pools(request: web.Request) -> web.Response:
    api = api_of(request)
    await caller(request, Scope.ADMIN)
    queue_stats = await api.queue.stats()
    default = api.settings.classifier.default_pool or DEFAULT_POOL
    waiting: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    for row in queue_stats.shapes:
        pool = str(row.requirements.get("pool") or default)
        waiting[pool] += row.waiting
        shapes[pool] += 1
    names = sorted(set(api.settings.pools) | set(waiting))
    return json_response(
        {
            "pools": [
                {
                    "name": name,
                    "config": api.settings.pools[name].model_dump(mode="json")
                    if name in api.settings.pools
                    else {},
                    "waiting": waiting[name],
                    "shapes": shapes[name],
                }
                for name in names
            ]
        }
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness: this process answers (its event loop turns)."""
    return json_response({"status": "ok", "checks": {}})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis answers and the event hub runs; 503 (problem+json naming which) otherwise."""
    api = api_of(request)
    try:
        await api.queue.client.ping()
    except (RedisError, OSError) as exc:
        raise ProblemError(503, f"Redis does not answer: {type(exc).__name__}") from None
    if not api.hub.alive:
        raise ProblemError(503, "the live event reader is not running")
    return json_response({"status": "ready", "checks": {"redis": "ok", "events": "ok"}})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = api_of(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return json_response(document())
