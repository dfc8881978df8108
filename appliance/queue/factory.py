"""The one way every process reaches the queue's Redis: standalone, Cluster or Sentinel, as `redis.mode` says.

queue = await connect_queue(settings, queue_name="default")

The CLI, the worker, the supervisor and its failure hook, the monitor, the pools command, the demo and the
benchmarks all call `connect_queue`, so a deployment changes the kind of Redis in one setting
(redisclient.py builds the client and checks the server is of that kind).
"""

from __future__ import annotations

from typing import Any

from appliance.config import RedisConnection
from appliance.queue.client import Queue
from appliance.queue.redisclient import RedisModeError


async def connect_queue(
    settings: Any,
    *,
    queue_name: str | None = None,
    connection: RedisConnection | None = None,
    classifier: Any = None,
    **redis_kwargs: Any,
) -> Queue:
    """The queue `queue_name` (default `redis.queue`) on the Redis the settings name, checked and ready.

    `settings` is the whole `Settings`; `connection` overrides `settings.redis_connection()` (a `--redis-url`
    flag, say); `redis_kwargs` go to the client (timeouts, retries). Raises RedisModeError (a wrong
    `redis.mode`), ScriptLibraryError, or redis-py's errors when Redis cannot be reached or refuses.
    """
    return await Queue.open(
        connection or settings.redis_connection(),
        queue_name=queue_name or settings.redis.queue,
        settings=settings.queue,
        classifier=classifier,
        **redis_kwargs,
    )


__all__ = ["RedisModeError", "connect_queue"]
