"""The API process: connect, serve, tell systemd (READY=1, watchdog pings while the loop and the event hub
run), run the webhook delivery worker, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

from appliance.api.app import make_app
from appliance.api.context import Api
from appliance.api.hub import EventHub
from appliance.api.keys import KeyStore
from appliance.api.limits import Limits
from appliance.api.metrics import ApiMetrics
from appliance.api.onetrip import OneTrip
from appliance.config.schema import Settings
from appliance.httpserve import start_server
from appliance.notify import Notifier, WatchdogPinger
from appliance.queue import Queue

log = logging.getLogger(__name__)


@dataclass
class Running:
    api: Api
    runner: Any
    port: int
    delivery: asyncio.Task[None] | None

    async def stop(self) -> None:
        if self.delivery is not None:
            self.delivery.cancel()
            with contextlib.suppress(BaseException):
                await self.delivery
        await self.api.hub.stop()
        await self.runner.cleanup()
        if self.api.webhooks is not None:
            await self.api.webhooks.close()


async def open_webhooks(queue: Queue, settings: Settings, registry: Any) -> Any:
    """The webhook service (its metrics on the API's /metrics registry), or None where it cannot run (the
    queue writes no event stream): submits naming a webhook are then refused with a 400 saying so."""
    from appliance.webhooks import Webhooks, WebhooksUnavailable

    try:
        return await Webhooks.open(queue, settings.webhooks, registry)
    except (WebhooksUnavailable, NotImplementedError) as exc:
        log.warning("webhooks are unavailable: %s", exc or type(exc).__name__)
        return None


async def start(queue: Queue, settings: Settings, host: str, port: int, *, webhooks: bool = True) -> Running:
    """Serve the API for `queue` on host:port (0: any free port); returns what `stop` ends."""
    metrics = ApiMetrics()
    hooks = await open_webhooks(queue, settings, metrics.registry) if webhooks else None
    store, limits = KeyStore(queue.client, queue.keys), Limits(queue.client, queue.keys)
    api = Api(
        queue=queue,
        settings=settings,
        store=store,
        limits=limits,
        hub=EventHub(queue),
        metrics=metrics,
        onetrip=OneTrip(queue, store.key, limits, settings.api.rate_per_s, settings.api.max_in_flight),
        webhooks=hooks,
    )
    api.hub.start()
    runner, bound = await start_server(make_app(api), host, port)
    delivery = asyncio.create_task(hooks.run_delivery(), name="webhook-delivery") if hooks else None
    return Running(api, runner, bound, delivery)


async def serve(
    queue: Queue, settings: Settings, host: str, port: int, notifier: Notifier | None = None
) -> int:
    notifier = notifier or Notifier()
    running = await start(queue, settings, host, port)
    shown = f"[{host}]" if ":" in host else host
    log.info("API on http://%s:%d/ (queue %s)", shown, running.port, queue.name)

    async def loop_turns() -> bool:
        return True

    async def background_alive() -> bool:
        return running.api.hub.alive and (running.delivery is None or not running.delivery.done())

    pinger = WatchdogPinger(notifier, [loop_turns, background_alive])
    pinger.start()
    notifier.ready(f"serving on {shown}:{running.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        notifier.stopping("stopping")
    finally:
        await pinger.stop()
        await running.stop()
    return 0
