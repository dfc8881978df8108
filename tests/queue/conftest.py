from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from appliance.config.queue import ScriptsMode
from appliance.queue import Queue, QueueSettings
from appliance.queue.models import Job
from appliance.queue.scripts import ScriptSet


@pytest.fixture(params=["functions", "evalsha"])
async def queue(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Queue]:
    """A queue on a flushed real Redis, once through FCALL and once through the EVALSHA fallback. Claims keep
    the order strictly (no slack), so tests can name the exact order."""
    if request.param == "functions":  # the deployer's step: clients never load the library themselves
        client = aioredis.Redis.from_url(redis_url)
        await ScriptSet().install(client)
        await client.aclose()
    q = await Queue.connect(
        redis_url,
        settings=QueueSettings(
            lease_ms=1000,
            reaper_interval_ms=100,
            retry_base_ms=0,
            retry_max_ms=0,
            claim_slack_ms=0,
            scripts=ScriptsMode.FUNCTIONS if request.param == "functions" else ScriptsMode.EVAL,
        ),
    )
    assert q.scripts.use_functions is (request.param == "functions")
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


@pytest.fixture
def packed_lengths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The argument count of every command hiredis packs from now on (the queue's connections pack with it)."""
    from appliance.queue import connections

    packed: list[int] = []
    original = connections._hiredis_pack
    assert original is not None

    def counting(command: tuple[object, ...]) -> bytes:
        packed.append(len(command))
        return original(command)

    monkeypatch.setattr(connections, "_hiredis_pack", counting)
    return packed


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every body `Job.model_validate_json` is given from now on (it still validates them)."""
    seen: list[str] = []
    real = Job.model_validate_json

    def counting(data: Any, **kwargs: Any) -> Job:
        seen.append(data)
        return real(data, **kwargs)

    monkeypatch.setattr(Job, "model_validate_json", counting)
    return seen


@pytest.fixture
async def two(redis_url: str) -> AsyncIterator[tuple[Queue, Queue]]:
    """Two queues on one flushed Redis, `quiet` and `full`, for the tests that run the same scenario on both
    paths of a worker's round trip (the tests give `full` a feature key)."""
    settings = QueueSettings(claim_slack_ms=0, lease_ms=60_000)
    quiet = await Queue.connect(redis_url, queue_name="quiet", settings=settings)
    full = await Queue.connect(redis_url, queue_name="full", settings=settings)
    await quiet.client.flushall()
    yield quiet, full
    await quiet.close()
    await full.close()
