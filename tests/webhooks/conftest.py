from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from appliance.config.webhooks import WebhookSettings
from appliance.queue import Queue, QueueSettings
from appliance.webhooks import Webhooks
from tests.webhooks.receiver import Receiver

#: Loopback receivers are allowed only by this setting.
LOOPBACK = ["127.0.0.1/32", "::1/128"]


def fast_settings(**overrides: object) -> WebhookSettings:
    values: dict[str, object] = {
        "allow_private": LOOPBACK,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.2,
        "timeout_s": 2.0,
        "poll_interval_ms": 50,
    }
    return WebhookSettings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    q = await Queue.connect(redis_url, settings=QueueSettings(lease_ms=1000, retry_base_ms=0, retry_max_ms=0))
    yield q
    await q.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait until `check` holds (a bound on a hang, not a timing assertion)."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def delivering(queue: Queue, settings: WebhookSettings) -> AsyncIterator[Webhooks]:
    """A Webhooks service with its delivery worker running."""
    webhooks = await Webhooks.open(queue, settings)
    task = asyncio.create_task(webhooks.run_delivery())
    try:
        yield webhooks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await webhooks.close()
