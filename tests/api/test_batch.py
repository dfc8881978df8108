"""Script calls made in one turn of the event loop share one pipeline (appliance.api.batch): one connection and
one write for all of them, and each call still gets its own result or error, also when the script had to be
loaded first."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from appliance.api.batch import Batcher
from appliance.queue.scripts import ScriptSet, load_sources

ECHO = "if ARGV[1] == 'bad' then return redis.error_reply('bad argument') end return ARGV[1]"


async def clients(redis: Redis) -> int:
    return len(await redis.client_list())


async def test_calls_of_one_turn_share_a_connection_and_keep_their_results(redis_url: str) -> None:
    admin = Redis.from_url(redis_url, decode_responses=True)
    client = Redis.from_url(redis_url, decode_responses=True)
    scripts = ScriptSet(sources={**load_sources(), "echo": ECHO})
    batcher = Batcher(scripts, client, "echo")
    try:
        await admin.script_flush()  # the first batch finds the script missing: each call runs again alone
        before = await clients(admin)
        calls = [batcher.call(["k"], [str(n)]) for n in range(10)]
        assert await asyncio.gather(*calls) == [str(n) for n in range(10)]
        # Those ten were one pipeline on one connection, and then again one at a time after the script load.
        after_first = await clients(admin)
        assert after_first - before == 1
        results = await asyncio.gather(
            *(batcher.call(["k"], [a]) for a in ("1", "bad", "3")), return_exceptions=True
        )
        assert results[0] == "1" and results[2] == "3"
        assert isinstance(results[1], ResponseError) and "bad argument" in str(results[1])
        with pytest.raises(ResponseError, match="bad argument"):
            await batcher.call(["k"], ["bad"])  # alone in its turn
        # One more connection at most: a call alone in its turn keeps the connection that answered as the pool's
        # spare (appliance.queue.scripts), so the next pipeline takes another; three calls unbatched would be more.
        assert await clients(admin) <= after_first + 1
    finally:
        await client.aclose()
        await admin.aclose()


async def test_a_batch_whose_connection_drops_fails_alone(redis_url: str) -> None:
    """The batch is written on a pool connection directly: when that connection dies before the replies come
    (here a proxy closes it once it passed the EVALSHAs on), each call of the batch gets the error (none waits
    forever, none is sent again: its script ran), and the next batch goes on a new connection."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    connections = 0

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        upstream_r, upstream_w = await asyncio.open_connection(host, int(port))
        first, sent = connections == 1, asyncio.Event()

        async def requests() -> None:
            while data := await reader.read(65536):
                if b"EVALSHA" in data:
                    sent.set()
                upstream_w.write(data)
                await upstream_w.drain()
            upstream_w.close()

        async def replies() -> None:
            while data := await upstream_r.read(65536):
                if first and sent.is_set():  # the replies to the first batch never arrive: closed instead
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(requests(), replies(), return_exceptions=True)

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    admin = Redis.from_url(redis_url, decode_responses=True)
    client = Redis.from_url(f"redis://127.0.0.1:{proxy_port}", decode_responses=True)
    counting = "redis.call('INCR', KEYS[1]) return ARGV[1]"
    scripts = ScriptSet(sources={**load_sources(), "count": counting})
    batcher = Batcher(scripts, client, "count")
    try:
        await admin.script_load(counting)
        calls = [batcher.call([f"ran:{n}"], [str(n)]) for n in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        assert [await admin.get(f"ran:{n}") for n in range(5)] == ["1"] * 5  # ran once, not sent again
        calls = [batcher.call([f"ran:{n}"], [str(n)]) for n in range(5)]
        assert await asyncio.gather(*calls) == [str(n) for n in range(5)]
        assert connections == 2
    finally:
        await client.aclose()
        await admin.aclose()
        proxy.close()
