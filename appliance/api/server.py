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
from appliance.api.processes import ProcessesFailed, Siblings, child_argv
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


async def start(
    queue: Queue,
    settings: Settings,
    host: str,
    port: int,
    *,
    webhooks: bool = True,
    reuse_port: bool = False,
) -> Running:
    """Serve the API for `queue` on host:port (0: any free port; `reuse_port`: beside other API processes on
    it); returns what `stop` ends."""
    metrics = ApiMetrics()
    hooks = await open_webhooks(queue, settings, metrics.registry) if webhooks else None
    store = KeyStore(queue.client, queue.keys)
    limits = Limits(queue.client, queue.keys, cluster=queue.cluster)
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
    runner, bound = await start_server(
        make_app(api), host, port, reuse_port=reuse_port, access_log=settings.api.access_log
    )
    delivery = asyncio.create_task(hooks.run_delivery(), name="webhook-delivery") if hooks else None
    return Running(api, runner, bound, delivery)


async def serve(
    queue: Queue,
    settings: Settings,
    host: str,
    port: int,
    notifier: Notifier | None = None,
    *,
    siblings: Siblings | None = None,
    reuse_port: bool = False,
) -> int:
    """Serve until SIGTERM; with `siblings` (api.processes > 1), start them on the port bound here, and stop
    with status 1 when one of them exits."""
    notifier = notifier or Notifier()
    running = await start(queue, settings, host, port, reuse_port=reuse_port or siblings is not None)
    shown = f"[{host}]" if ":" in host else host
    stop, failed = asyncio.Event(), False
    try:
        if siblings is not None:
            siblings.argv = child_argv(siblings.argv, host, running.port)
            await siblings.start()
        log.info("API on http://%s:%d/ (queue %s)", shown, running.port, queue.name)

        async def loop_turns() -> bool:
            return True

        async def background_alive() -> bool:
            alive = running.api.hub.alive and (running.delivery is None or not running.delivery.done())
            return alive and (siblings is None or siblings.alive())

        pinger = WatchdogPinger(notifier, [loop_turns, background_alive])
        pinger.start()
        notifier.ready(f"serving on {shown}:{running.port}")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            failed = await _until_stopped(stop, siblings)
            notifier.stopping("stopping")
        finally:
            await pinger.stop()
    except ProcessesFailed as exc:
        log.error("%s; stopping", exc)
        failed = True
    finally:
        if siblings is not None:
            await siblings.stop()
        await running.stop()
    return 1 if failed else 0


async def _until_stopped(stop: asyncio.Event, siblings: Siblings | None) -> bool:
    """Wait for SIGTERM (False), or for one of `siblings` to exit (True)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        if siblings is not None and not siblings.alive():
            siblings.check()  # raises ProcessesFailed, naming it
    return False
