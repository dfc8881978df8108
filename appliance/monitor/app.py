"""The monitor web app (aiohttp): the dashboard page, a WebSocket of live updates, a JSON snapshot, pool metrics.

Routes:
- `GET /`               the dashboard (static HTML/CSS/JS shipped in appliance/monitor/static, no CDN)
- `GET /static/<file>`  its assets
- `GET /healthz`        `{"ok": true, "redis": bool}` (no token needed: load balancers probe it)
- `GET /api/state`      the full state snapshot (JSON)
- `GET /ws`             WebSocket: `full_state_snapshot` on connect, then deltas (`machine_update`,
                        `machine_event`, `job_update`, `queue_stats`, `pools`, `redis`, `tick`); the client may send
                        `{"type": "resync_request"}` for a new snapshot, `{"type": "ping"}` for a `pong`.
- `GET /metrics`        Prometheus text of the collector the caller hands `make_app` (the pool signals,
                        appliance.pools.PoolSignalsCollector: the monitor itself knows nothing of pools)

With a token configured (`monitor.token`, `monitor.token_file`, credential `monitor-token`) every route but `/`,
`/static` and `/healthz` needs it: `Authorization: Bearer <token>`, or `?token=<token>` (browsers cannot set
headers on a WebSocket). The page asks for the token and keeps it in the tab's sessionStorage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, cast

from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from appliance.config import RedisConnection, Settings
from appliance.monitor.feed import Feed, PoolSignals
from appliance.monitor.state import MonitorState, now_ms

log = logging.getLogger(__name__)

#: Messages buffered per client; a client that falls this far behind is dropped (it reconnects and resyncs).
CLIENT_BUFFER = 2000
#: WebSocket close code for a missing or wrong token (4000-4999: application codes).
CLOSE_UNAUTHORIZED = 4401


def static_dir() -> Path:
    return Path(str(resources.files("appliance.monitor") / "static"))


@dataclass(eq=False)
class Client:
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(CLIENT_BUFFER))
    dropped: bool = False


class Hub:
    """Fans every update out to the connected WebSocket clients (serialised once per message)."""

    def __init__(self) -> None:
        self.clients: set[Client] = set()

    def publish(self, message: dict[str, Any]) -> None:
        if not self.clients:
            return
        text = json.dumps(message, default=str, separators=(",", ":"))
        for client in list(self.clients):
            try:
                client.outbox.put_nowait(text)
            except asyncio.QueueFull:
                client.dropped = True
                self.clients.discard(client)
                client.outbox = asyncio.Queue(1)
                client.outbox.put_nowait("")  # wakes the writer, which closes the socket


class Monitor:
    """State + feed + hub + ticker: everything the web app serves."""

    def __init__(
        self,
        settings: Settings,
        *,
        url: str,
        client_kwargs: dict[str, Any] | None = None,
        queue_name: str | None = None,
        other_queues: list[str] | None = None,
        token: str | None = None,
        poll_s: float = 2.0,
        tick_s: float = 1.0,
        pool_signals: PoolSignals | None = None,
        connection: RedisConnection | None = None,
    ) -> None:
        self.settings = settings
        self.token = token
        self.tick_s = tick_s
        self.state = MonitorState(
            queue_name or settings.redis.queue,
            settings.machine.status_interval_s,
            settings.worker.queues if other_queues is None else other_queues,
        )
        self.hub = Hub()
        self.feed = Feed(
            settings,
            self.state,
            self.hub.publish,
            url=url,
            client_kwargs=client_kwargs,
            poll_s=poll_s,
            pool_signals=pool_signals,
            connection=connection,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.feed.run(), name="monitor-feed"),
            asyncio.create_task(self._ticker(), name="monitor-ticker"),
        ]

    async def stop(self) -> None:
        self.feed.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in list(self.hub.clients):
            with contextlib.suppress(Exception):
                await client.ws.close()

    async def _ticker(self) -> None:
        """Offline detection needs a clock, not an event: re-evaluate every tick, even while Redis is away."""
        while True:
            await asyncio.sleep(self.tick_s)
            at = now_ms()
            for mid in self.state.tick(at):
                view = self.state.machines.get(mid)
                if view is not None:
                    self.hub.publish({"type": "machine_update", "machine": self.state.machine_view(view, at)})
            self.hub.publish(
                {
                    "type": "tick",
                    "now_ms": at,
                    "redis": {"ok": self.state.redis_ok, "error": self.state.redis_error},
                    "machines": [
                        {
                            "id": v.id,
                            "online": v.online,
                            "offline_reason": v.offline_reason,
                            "age_s": round((at - v.seen_ms) / 1000, 1) if v.seen_ms else None,
                        }
                        for v in self.state.machines.values()
                    ],
                    "series": self.state.series.render(at),
                }
            )

    def authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        header = request.headers.get("Authorization", "")
        offered = (
            header[7:].strip() if header.lower().startswith("bearer ") else request.query.get("token", "")
        )
        return hmac.compare_digest(offered.encode(), self.token.encode())


MONITOR_KEY: web.AppKey[Monitor] = web.AppKey("monitor", Monitor)
PUBLIC = ("/", "/healthz", "/favicon.ico")


@web.middleware
async def _security(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    monitor = request.app[MONITOR_KEY]
    public = request.path in PUBLIC or request.path.startswith("/static/") or request.path == "/ws"
    if not public and not monitor.authorized(request):
        raise web.HTTPUnauthorized(text="monitor token required", headers={"WWW-Authenticate": "Bearer"})
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    )
    if request.path == "/" or request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_dir() / "index.html")


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "redis": request.app[MONITOR_KEY].state.redis_ok})


async def _state(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[MONITOR_KEY].state.snapshot(), dumps=lambda v: json.dumps(v, default=str)
    )


async def _metrics(request: web.Request) -> web.Response:
    monitor = request.app[MONITOR_KEY]
    registry = request.app[REGISTRY_KEY]
    collector = request.app[COLLECTOR_KEY]
    if monitor.feed.queue is not None:
        collector.queue = monitor.feed.queue  # the feed reconnects with a new client; follow it
        await collector.ensure_fresh()
    else:
        collector.last_ok = False  # Redis away: the numbers shown are the last ones known
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _ws(request: web.Request) -> web.WebSocketResponse:
    monitor = request.app[MONITOR_KEY]
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=64 * 1024)
    await ws.prepare(request)
    if not monitor.authorized(request):
        await ws.send_str(json.dumps({"type": "auth_required"}))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"monitor token required")
        return ws
    client = Client(ws)
    # Snapshot first, then register, with no await in between: no update can slip through the gap.
    client.outbox.put_nowait(json.dumps(monitor.state.snapshot(), default=str, separators=(",", ":")))
    monitor.hub.clients.add(client)
    writer = asyncio.create_task(_write(client), name="monitor-ws-writer")
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                body = json.loads(message.data)
            except ValueError:
                continue
            kind = body.get("type") if isinstance(body, dict) else None
            if kind == "resync_request":
                with contextlib.suppress(asyncio.QueueFull):
                    client.outbox.put_nowait(json.dumps(monitor.state.snapshot(), default=str))
            elif kind == "ping":
                with contextlib.suppress(asyncio.QueueFull):
                    client.outbox.put_nowait(json.dumps({"type": "pong", "now_ms": now_ms()}))
    finally:
        monitor.hub.clients.discard(client)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
    return ws


async def _write(client: Client) -> None:
    while True:
        text = await client.outbox.get()
        if client.dropped:
            await client.ws.close(code=1013, message=b"too slow; reconnect")  # 1013: try again later
            return
        await client.ws.send_str(text)


class QueueCollector(Protocol):
    """A Prometheus collector over the queue the monitor reads, refreshed on scrape (the pool signals)."""

    #: The feed's current queue client, handed over before each scrape (the feed reconnects with a new one).
    queue: Any
    last_ok: bool

    async def ensure_fresh(self) -> object: ...

    async def close(self) -> None: ...

    def collect(self) -> Any: ...


REGISTRY_KEY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
COLLECTOR_KEY: web.AppKey[Any] = web.AppKey("pool_collector", object)


def make_app(monitor: Monitor, collector: QueueCollector) -> web.Application:
    """The monitor's web app; `/metrics` serves `collector`, which the app closes on shutdown."""
    app = web.Application(middlewares=[_security])
    app[MONITOR_KEY] = monitor
    registry = CollectorRegistry(auto_describe=False)
    registry.register(cast(Collector, collector))
    app[REGISTRY_KEY] = registry
    app[COLLECTOR_KEY] = collector

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await monitor.start()
        yield
        await monitor.stop()
        await collector.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/state", _state)
    app.router.add_get("/ws", _ws)
    app.router.add_get("/metrics", _metrics)
    app.router.add_static("/static/", static_dir(), show_index=False, follow_symlinks=False)
    return app
