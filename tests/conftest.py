"""Shared fixtures: every test that touches Redis talks to a real redis-server started here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from appliance.localredis import LocalRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One redis-server for the session; tests that must crash or restart Redis use `private_redis`."""
    server = LocalRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def private_redis() -> Iterator[LocalRedis]:
    """A redis-server of the test's own, free to kill -9 or restart."""
    server = LocalRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
