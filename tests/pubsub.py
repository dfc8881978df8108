"""Reading pub/sub messages in tests: what a subscriber received, decoded."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.client import PubSub

from appliance.queue.events import pubsub_events


async def json_messages(
    pubsub: PubSub, count: int, timeout_s: float = 10
) -> list[tuple[str, dict[str, Any]]]:
    """The next `count` lifecycle events as (channel, event), decoded as every subscriber decodes them (a message
    is one event, or a round trip's events of one kind with a `jobs` list); subscribe confirmations are skipped."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(timeout_s):
        while len(seen) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                channel = message["channel"].decode()
                seen.extend((channel, event) for event in pubsub_events(message["data"]))
    return seen
