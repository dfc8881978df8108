"""The Redis ACL rules the webhook service adds to its API process's user (beside the submitter's): its own
keys `webhooks:{<queue>}:*`, its scripts, and the consumer group on the queue's event stream."""

from __future__ import annotations

import re
from collections.abc import Sequence

from appliance.queue.keys import QueueKeys
from appliance.webhooks.keys import WebhookKeys
from appliance.webhooks.scripts import load_sources

#: What the service runs outside its scripts.
DIRECT = (
    "evalsha",
    "script|load",
    "time",
    "hget",
    "hmget",
    "hset",
    "hsetnx",
    "hdel",
    "zrange",
    "zrevrangebyscore",
    # The feed: a consumer group on the queue's event stream.
    "xgroup|create",
    "xgroup|delconsumer",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xinfo|groups",
    "xinfo|consumers",
    "xrange",
)


def script_commands() -> set[str]:
    sources = load_sources()
    return {c.lower() for s in sources.values() for c in re.findall(r"rcall\('([A-Za-z]+)'", s)}


def webhook_rules(queues: Sequence[str]) -> list[str]:
    """ACL rules (`+command`, `~pattern`) for the webhook service of `queues`."""
    commands = sorted({*DIRECT, *script_commands()})
    patterns = [f"~{WebhookKeys(QueueKeys(q).name).prefix}*" for q in queues]
    patterns += [f"~{QueueKeys(q).events}" for q in queues]
    return [*(f"+{c}" for c in commands), *patterns]
