"""Script calls made in one turn of the event loop share one pipeline (appliance.api.batch): one connection and
one write for all of them, and each call still gets its own result or error, also when the script had to be
loaded first."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
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
