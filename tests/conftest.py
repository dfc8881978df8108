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


#: Fixtures that mean a test talks to a real redis-server.
_REDIS_FIXTURES = {"redis_server", "redis_url", "private_redis", "aredis", "queue", "make_queue"}
#: Module-level names that mean a test starts real servers or processes of its own.
_PROCESS_MARKERS = ("LocalRedis", "subprocess", "create_subprocess_exec", "standins", "TestServer")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests `integration` when they use a real Redis, a stand-in server or a subprocess.

    CI runs the suite in stages (`-m "not integration and not systemd"`, `-m "integration and not systemd"`,
    `-m systemd`); together they are exactly `python -m pytest tests`.
    """
    for item in items:
        if item.get_closest_marker("systemd"):
            continue
        module = getattr(item, "module", None)
        source_names = set(vars(module)) if module is not None else set()
        uses_redis = bool(_REDIS_FIXTURES & set(getattr(item, "fixturenames", ())))
        spawns = any(name in source_names for name in _PROCESS_MARKERS)
        if uses_redis or spawns:
            item.add_marker(pytest.mark.integration)
