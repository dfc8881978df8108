"""A real API server on loopback (in this test's event loop, on a real TCP port) over a real redis-server, and
real HTTP clients holding keys of two tenants."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from appliance.api.keys import KeyStore, Scope
from appliance.api.server import Running, start
from appliance.config.schema import Settings
from appliance.queue import Queue


@dataclass
class Client:
    """One tenant's HTTP client."""

    http: aiohttp.ClientSession
    base: str
    token: str
    tenant: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = self.headers(**kwargs.pop("headers", {}))
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            body: Any = await resp.read()
            if resp.content_type in ("application/json", "application/problem+json"):
                body = await resp.json(content_type=None)
            return resp.status, body, resp


@dataclass
class Server:
    running: Running
    queue: Queue
    base: str
    http: aiohttp.ClientSession
    store: KeyStore

    async def client(self, tenant: str, scopes: list[Scope] | None = None, **limits: Any) -> Client:
        _, token = await self.store.create(
            tenant, scopes or [Scope.SUBMIT, Scope.READ, Scope.CANCEL], **limits
        )
        return Client(self.http, self.base, token, tenant)


def api_settings(**api: Any) -> Settings:
    return Settings.model_validate({"api": {"sse_keepalive_s": 1, **api}, "queue": {"retry_base_ms": 0}})


@pytest.fixture
async def make_server(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[Running, Queue]] = []
    http = aiohttp.ClientSession()

    async def factory(settings: Settings | None = None) -> Server:
        settings = settings or api_settings()
        queue = await Queue.connect(redis_url, settings=settings.queue)
        running = await start(queue, settings, "127.0.0.1", 0)
        made.append((running, queue))
        return Server(
            running, queue, f"http://127.0.0.1:{running.port}", http, KeyStore(queue.client, queue.keys)
        )

    yield factory
    for running, queue in made:
        await running.stop()
        await queue.close()
    await http.close()


@pytest.fixture
async def server(make_server: Callable[..., Any]) -> Server:
    return await make_server()


async def finish(queue: Queue, job_id: str, outcome: str = "completed", result: Any = None) -> None:
    """Run one job through a real worker session of the queue: claim it, then complete or fail it."""
    from appliance.queue import Capabilities, WorkerSession

    session = await WorkerSession.open(queue, f"w-{job_id[:8]}", Capabilities(services=["echo"]))
    others = []
    try:
        while True:
            claimed = await session.claim()
            assert claimed is not None, f"job {job_id} is not waiting"
            if claimed.job.id == job_id:
                break
            others.append(claimed)
        for other in others:  # back in line at their own place
            await queue.release(other.job.id, other.token)
        if outcome == "completed":
            await queue.complete(job_id, claimed.token, result if result is not None else {"ok": True})
        else:
            await queue.fail(job_id, claimed.token, "it broke", retryable=False)
    finally:
        await session.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api_process(redis_url: str) -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_REDIS_URL=redis_url, APPLIANCE_API__SSE_KEEPALIVE_S="1")

    def start(port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "api", "--host", "127.0.0.1", "--port", str(port)], env=env
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


async def wait_ready(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(600):
        try:
            async with http.get(base + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the API did not get ready")
