"""A real webhook receiver on loopback (aiohttp) that verifies every request with the standardwebhooks package,
as a customer's endpoint would, and can be turned down, made to hang, or to redirect."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    id: str
    type: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    secret: str = ""
    #: Answer 503 while down (a receiver that is down for a while).
    down: bool = False
    #: Hold every request open until released (a delivery cut off mid-flight).
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: Requests that reached the redirect target (must stay empty: redirects are not followed).
    followed: int = 0
    attempts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: Ends the requests held by `hang` (with a 503).
    released: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1") -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/moved", self._moved)
        app.router.add_post("/target", self._target)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/hook"
        return self

    def at(self, path: str) -> str:
        return self.url.rsplit("/", 1)[0] + path

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.arrived.set()
        body = await request.text()
        if self.hang:
            await self.released.wait()
            return web.Response(status=503)
        if self.down:
            return web.Response(status=503)
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return web.Response(status=400)
        parsed = json.loads(body)
        self.received.append(
            Received(request.headers["webhook-id"], parsed["type"], parsed, dict(request.headers))
        )
        return web.Response(status=204)

    async def _moved(self, request: web.Request) -> web.Response:
        self.attempts += 1
        raise web.HTTPFound(self.at("/target"))

    async def _target(self, request: web.Request) -> web.Response:
        self.followed += 1
        return web.Response(status=204)

    def unique(self) -> dict[str, Received]:
        """What a receiver that de-duplicates on webhook-id keeps."""
        return {r.id: r for r in self.received}
