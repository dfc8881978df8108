"""Reading pub/sub messages in tests: what a subscriber received, decoded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio.client import PubSub


async def json_messages(
    pubsub: PubSub, count: int, timeout_s: float = 10
) -> list[tuple[str, dict[str, Any]]]:
    """The next `count` messages as (channel, decoded JSON body); subscribe confirmations are skipped."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(timeout_s):
        while len(seen) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                seen.append((message["channel"].decode(), json.loads(message["data"])))
    return seen
