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


async def test_reads_in_a_row_share_one_timer_for_the_socket_timeout(redis_url: str) -> None:
    # Before: every read entered asyncio.timeout (a Timeout object, a timer pushed on the loop's heap and
    # cancelled): ~9-13 µs of a one-call-at-a-time submit. Now one timer per connection moves itself on.
    client, conn = await _held(redis_url, socket_timeout=5)
    loop = asyncio.get_running_loop()
    scheduled = 0
    original = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal scheduled
        scheduled += 1
        return original(when, callback, *args, **kwargs)

    try:
        await conn.send_command("PING")
        assert await conn.read_response() == "PONG"
        loop.call_at = counting  # type: ignore[method-assign]
        for n in range(20):
            await conn.send_command("ECHO", str(n))
            assert await conn.read_response() == str(n)
    finally:
        loop.call_at = original  # type: ignore[method-assign]
        await client.connection_pool.release(conn)
        await client.aclose()
    assert scheduled == 0


async def test_each_read_gets_the_whole_socket_timeout(redis_url: str) -> None:
    # Quick reads spread over more than the timeout never time out; a slow one does, and is dropped.
    client, conn = await _held(redis_url, socket_timeout=0.3)
    try:
        for _ in range(4):
            await asyncio.sleep(0.15)
            await conn.send_command("BLPOP", "direct:empty", 0.1)  # answered (nil) after 0.1 s
            assert await conn.read_response() is None
        await conn.send_command("BLPOP", "direct:empty", 2)
        with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
            await conn.read_response()
        assert conn._reader is None
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()


async def test_a_cancelled_read_is_cancelled_not_timed_out(redis_url: str) -> None:
    client, conn = await _held(redis_url, socket_timeout=5)
    try:
        await conn.send_command("BLPOP", "direct:empty", 2)
        reading = asyncio.ensure_future(conn.read_response())
        await asyncio.sleep(0.1)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert conn._reader is None  # its reply may still come: never read as the next command's
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()


async def test_redis_py_may_relax_the_deadline_of_the_read_in_progress(redis_url: str) -> None:
    # What redis-py does on a maintenance notice (update_current_socket_timeout): the read waits longer.
    client, conn = await _held(redis_url, socket_timeout=0.2)
    try:
        await conn.send_command("BLPOP", "direct:empty", 0.5)
        reading = asyncio.ensure_future(conn.read_response())
        await asyncio.sleep(0.05)
        conn.update_current_socket_timeout(3)
        assert await reading is None
        conn.update_current_socket_timeout(None)  # no read in progress: nothing to change
        await conn.send_command("PING")
        assert await conn.read_response() == "PONG"
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()


@pytest.mark.parametrize("args", [["a", 1, 1.5, b"\x00\xff", "é☃", ""], [], list(range(30))])
def test_evalsha_packs_its_keys_once_per_list_and_sends_what_pack_command_sends(
    args: list[Any], packed_lengths: list[int]
) -> None:
    # Before: every call packed the script's sha and all its KEYS again (a submit: 32 arguments, ~4 µs).
    packed = packed_lengths
    conn, keys, heads = HiredisConnection(), [f"appliance:{{q}}:key{i}" for i in range(14)], {}
    expected = b"".join(Connection().pack_command("EVALSHA", "f" * 40, len(keys), *keys, *args))
    for _ in range(3):
        assert b"".join(conn.pack_evalsha("f" * 40, keys, args, heads) or []) == expected
    assert packed[0] == 3 + len(keys)
    assert packed[1:] == ([len(args)] * 3 if args else [])


@pytest.mark.parametrize("rest", [["job-1", b'{"a":1}', 0, 3, 0], []])
def test_evalsha_packs_a_fixed_argument_prefix_once_with_its_keys(
    rest: list[Any], packed_lengths: list[int]
) -> None:
    # Before: a submit packed all 15 of its ARGV on every call, though 10 are the same for every job of a shape
    # (hiredis formats each with sprintf). A PrefixedArgs names that prefix: packed once with the KEYS, the same
    # bytes as pack_command; another prefix list (new settings) is packed again, never mixed up with the first.
    from appliance.queue import connections

    packed = packed_lengths
    conn, keys, heads = HiredisConnection(), [f"appliance:{{q}}:key{i}" for i in range(12)], {}
    fixed, other = ["", "q", "stream+pubsub", 10000, "s1", "{}"], ["", "q", "none", 5, "s1", "{}"]
    for prefix in (fixed, fixed, other, fixed):
        args = connections.prefixed(prefix, rest)
        assert args == [*prefix, *rest] and args.prefix is prefix
        expected = b"".join(Connection().pack_command("EVALSHA", "f" * 40, len(keys), *keys, *prefix, *rest))
        assert b"".join(conn.pack_evalsha("f" * 40, keys, args, heads) or []) == expected
    head = 3 + len(keys) + len(fixed)
    assert packed == ([head, len(rest), len(rest), head, len(rest), len(rest)] if rest else [head, head])
