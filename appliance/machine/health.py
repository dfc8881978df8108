"""The machine's health server: /health, /ready, /status, /metrics (aiohttp).

`make_app` builds the application around the supervisor's `MachineState` and a metrics registry it is handed;
the server itself holds no state, so tests build it around a state they fill in.

- GET /health   200 when every check and service is healthy, else 503; body: healthy, phase, checks, services.
- GET /ready    200 once the startup sequence completed (and until shutdown), else 503.
- GET /status   the machine status payload (appliance.machine.status), secrets scrubbed.
- GET /metrics  Prometheus text format from the injected registry.
- POST /refresh-status  publish the status now (when the supervisor passed a `refresh` callback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from appliance.machine.state import MachineState
from appliance.machine.status import REDACTED, build_status

log = logging.getLogger(__name__)

STATE_KEY: web.AppKey[MachineState] = web.AppKey("machine_state", MachineState)
REGISTRY_KEY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
REFRESH_KEY: web.AppKey[Any] = web.AppKey("refresh", object)


@web.middleware
async def _cors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # The monitor UI on another port reads these endpoints from the browser (the original served CORS *).
    response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    healthy = state.healthy()
    body = {
        "healthy": healthy,
        "machine_id": state.machine_id,
        "phase": state.phase.value,
        "checks": state.checks(),
        "services": state.service_health(),
        "supervision": state.supervision,
    }
    return web.json_response(body, status=200 if healthy else 503)


async def _ready(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    ready = state.ready()
    return web.json_response({"ready": ready, "phase": state.phase.value}, status=200 if ready else 503)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(build_status(request.app[STATE_KEY], "event_driven"))


async def _metrics(request: web.Request) -> web.Response:
    text = generate_latest(request.app[REGISTRY_KEY]).decode()
    for secret in request.app[STATE_KEY].secrets:
        if secret and len(secret) >= 4 and secret in text:  # labels come from worker reports: belt and braces
            text = text.replace(secret, REDACTED)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _refresh(request: web.Request) -> web.Response:
    refresh = request.app[REFRESH_KEY]
    if refresh is None:
        raise web.HTTPNotFound(text="no status publisher on this server")
    await refresh()
    return web.json_response({"published": True})


def make_app(
    state: MachineState, registry: CollectorRegistry, refresh: Callable[[], Awaitable[None]] | None = None
) -> web.Application:
    app = web.Application(middlewares=[_cors])
    app[STATE_KEY] = state
    app[REGISTRY_KEY] = registry
    app[REFRESH_KEY] = refresh
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/refresh-status", _refresh)
    return app
