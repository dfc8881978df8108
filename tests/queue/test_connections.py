"""The hiredis command packer sends exactly what redis-py's own packer sends, and a real Redis agrees."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


# --- replies read without redis-py's layers (connections._DirectReads): the same outcomes as redis-py's path ----


async def _held(redis_url: str, **kwargs: object) -> tuple[Any, Any]:
    client = aioredis.Redis.from_url(
        redis_url, connection_class=HiredisConnection, decode_responses=True, **kwargs
    )
    return client, await client.connection_pool.get_connection()


async def test_error_replies_raise_and_leave_the_connection_usable(redis_url: str) -> None:
    client, conn = await _held(redis_url)
    try:
        await conn.send_command("SET", "direct:k", "v")
        assert await conn.read_response() == "OK"
        await conn.send_command("INCR", "direct:k")
        with pytest.raises(ResponseError, match="not an integer"):
            await conn.read_response()
        await conn.send_command("GET", "direct:k")
        assert await conn.read_response() == "v"
        big = "x" * 1_000_000  # a reply that arrives in many reads
        await conn.send_command("EVAL", "return {ARGV[1], 7, {'a'}}", 0, big)
        assert await conn.read_response() == [big, 7, ["a"]]
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()


async def test_a_reply_later_than_the_socket_timeout_raises_and_drops_the_connection(redis_url: str) -> None:
    client, conn = await _held(redis_url, socket_timeout=0.2)
    try:
        await conn.send_command("BLPOP", "direct:empty", 2)
        with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
            await conn.read_response()
        assert conn._reader is None  # disconnected: the late reply can never answer the next command
        await conn.connect()
        await conn.send_command("PING")
        assert await conn.read_response() == "PONG"
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()


async def test_a_connection_the_server_closed_raises_connection_error(redis_url: str) -> None:
    client, conn = await _held(redis_url)
    other = aioredis.Redis.from_url(redis_url)
    try:
        await conn.send_command("CLIENT", "ID")
        own_id = await conn.read_response()
        assert await other.client_kill_filter(_id=own_id) == 1
        await conn.send_command("PING")
        with pytest.raises(RedisConnectionError):
            await conn.read_response()
        assert conn._reader is None
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()
        await other.aclose()


async def test_push_notices_between_replies_are_skipped(redis_url: str) -> None:
    # RESP3 (redis-py's default): client-side caching invalidations arrive as push notices on the connection.
    client, conn = await _held(redis_url, protocol=3)
    other = aioredis.Redis.from_url(redis_url)
    try:
        await conn.send_command("CLIENT", "TRACKING", "ON")
        assert await conn.read_response() in ("OK", b"OK")
        await conn.send_command("GET", "direct:tracked")
        assert await conn.read_response() is None
        await other.set("direct:tracked", "1")  # an invalidation is pushed to `conn` now
        await conn.send_command("ECHO", "after")
        assert await conn.read_response() == "after"
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()
        await other.aclose()


async def test_replies_in_a_row_share_one_timer_and_a_late_one_still_times_out(redis_url: str) -> None:
    # The socket timeout of every read is one timer handle per connection, re-armed only when it fires (a
    # timeout context per read made and cancelled a handle for each reply).
    client, conn = await _held(redis_url, socket_timeout=0.3)
    loop = asyncio.get_running_loop()
    armed = 0
    call_at = loop.call_at

    def counting_call_at(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal armed
        armed += 1
        return call_at(*args, **kwargs)

    try:
        loop.call_at = counting_call_at  # type: ignore[method-assign]
        for _ in range(50):
            await conn.send_command("PING")
            assert await conn.read_response() == "PONG"
        loop.call_at = call_at  # type: ignore[method-assign]
        assert armed <= 2, armed
        # The handle armed for an early read's deadline re-arms for a later read, which still times out at its own.
        await asyncio.sleep(0.2)
        await conn.send_command("BLPOP", "direct:empty", 2)
        started = loop.time()
        with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
            await conn.read_response()
        assert loop.time() - started >= 0.3
        assert conn._reader is None
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
        await client.connection_pool.release(conn)
        await client.aclose()


async def test_a_read_cancelled_by_its_caller_is_cancelled_not_timed_out(redis_url: str) -> None:
    client, conn = await _held(redis_url, socket_timeout=5)
    try:
        await conn.send_command("BLPOP", "direct:empty", 2)
        reading = asyncio.create_task(conn.read_response())
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert conn._reader is None  # a reply may still come: the connection is dropped, as redis-py does
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()


async def test_a_relaxed_timeout_from_a_maintenance_notice_moves_the_reads_deadline(redis_url: str) -> None:
    # redis-py reschedules the active read's deadline when the server announces maintenance.
    client, conn = await _held(redis_url, socket_timeout=0.2)
    try:
        await conn.send_command("BLPOP", "direct:empty", 1)
        reading = asyncio.create_task(conn.read_response())
        await asyncio.sleep(0.05)
        conn.update_current_socket_timeout(relaxed_timeout=3)
        assert await reading is None  # BLPOP's own 1 s timeout answered, past the 0.2 s socket timeout
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()
