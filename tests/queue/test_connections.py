"""The hiredis command packer sends exactly what redis-py's own packer sends, and a real Redis agrees."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from appliance.queue import Queue
from appliance.queue.connections import (
    HiredisConnection,
    HiredisSSLConnection,
    HiredisUnixConnection,
    connection_class_for,
)

ARGS = [
    ("SET", "k", "v"),
    ("CONFIG GET", "maxmemory"),
    ("FCALL", "f", 2, "a", b"b\x00\xff", 1.5, 0.1, 1e20, -7, "é☃", ""),
    ("HSET", "h", "x" * 100_000, "y"),
]


@pytest.mark.parametrize("args", ARGS)
def test_packing_matches_redis_py(args: tuple) -> None:
    ours, theirs = HiredisConnection(), Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    assert b"".join(ours.pack_commands([args, args])) == b"".join(theirs.pack_commands([args, args]))


def test_values_redis_py_refuses_are_still_refused() -> None:
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", None)


def test_url_schemes_pick_the_matching_class() -> None:
    assert issubclass(connection_class_for("rediss://h:6380/0"), SSLConnection)
    assert connection_class_for("rediss://h:6380/0") is HiredisSSLConnection
    assert connection_class_for("unix:///run/redis.sock") is HiredisUnixConnection
    assert issubclass(HiredisUnixConnection, UnixDomainSocketConnection)
    assert connection_class_for("redis://127.0.0.1:6379/0") is HiredisConnection


async def test_the_queue_talks_through_it(redis_url: str) -> None:
    queue = await Queue.connect(redis_url)
    try:
        assert queue.client.connection_pool.connection_class is HiredisConnection
        await queue.client.set("packed:é", "x" * 70_000)
        assert await queue.client.get("packed:é") == "x" * 70_000
        assert await queue.client.config_get("maxmemory") is not None
    finally:
        await queue.close()


async def test_connect_refuses_a_url_without_a_database_number(redis_url: str) -> None:
    # The Python API gets the same check as the config: redis-py would connect to db 0.
    with pytest.raises(ValueError, match="must be a database number"):
        await Queue.connect(redis_url.rsplit("/", 1)[0] + "/x")
