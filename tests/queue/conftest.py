from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from appliance.queue import Queue, QueueSettings
from appliance.queue.scripts import ScriptSet


@pytest.fixture(params=["functions", "evalsha"])
async def queue(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Queue]:
    """A queue on a flushed real Redis, once through FCALL and once through the EVALSHA fallback. Claims keep
    the order strictly (no slack), so tests can name the exact order."""
    q = await Queue.connect(
        redis_url,
        settings=QueueSettings(
            lease_ms=1000, reaper_interval_ms=100, retry_base_ms=0, retry_max_ms=0, claim_slack_ms=0
        ),
    )
    if request.param == "evalsha":
        q.scripts = ScriptSet(use_functions=False)
        await q.scripts.load(q.client)
    yield q
    await q.close()


@pytest.fixture
async def make_queue(redis_url: str) -> AsyncIterator[Callable[..., object]]:
    made: list[Queue] = []

    async def factory(**settings: object) -> Queue:
        q = await Queue.connect(redis_url, settings=QueueSettings(**settings))
        made.append(q)
        return q

    yield factory
    for q in made:
        await q.close()
