"""A Redis client of the kind `redis.mode` names (standalone, Cluster, Sentinel), and the check that the server
is that kind. Standalone clients pack commands with hiredis (connections.py); a Cluster client discovers
the nodes from its seeds and follows MOVED/ASK (redis-py's RedisCluster); a Sentinel client asks the sentinels
where the primary is and asks again when a connection to it fails (redis-py's Sentinel), which is how it
follows a failover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, ResponseError

from appliance.config import RedisConnection, RedisMode, check_database
from appliance.config.connection import split_address
from appliance.queue.connections import connection_class_for
from appliance.queue.errors import QueueError


class RedisModeError(QueueError, ValueError):
    """`redis.mode` does not match the server found (one line naming the setting)."""


Closer = Callable[[], Awaitable[None]]


def _tls(url: str) -> bool:
    return urlsplit(url).scheme == "rediss"


def _database(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def _cluster_client(conn: RedisConnection, kwargs: dict[str, Any]) -> Any:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    parts = urlsplit(conn.url)
    seeds = [ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379)]
    seeds += [ClusterNode(*split_address(a)) for a in conn.nodes]
    kwargs.pop("connection_class", None)
    if _tls(conn.url):
        kwargs["ssl"] = True
    return RedisCluster(startup_nodes=seeds, **kwargs)


def _sentinel_client(conn: RedisConnection, kwargs: dict[str, Any]) -> tuple[Any, Closer]:
    from redis.asyncio.sentinel import Sentinel

    kwargs.pop("connection_class", None)
    tls = _tls(conn.url)
    sentinel_kwargs: dict[str, Any] = {
        k: v for k, v in kwargs.items() if k.startswith("socket_") or k.startswith("ssl_")
    }
    if tls:
        sentinel_kwargs["ssl"] = True
    if conn.sentinel_password is not None:
        sentinel_kwargs["password"] = conn.sentinel_password
    if conn.sentinel_username is not None:
        sentinel_kwargs["username"] = conn.sentinel_username
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [split_address(a) for a in conn.sentinels], sentinel_kwargs=sentinel_kwargs, min_other_sentinels=0
    )
    client = sentinel.master_for(
        conn.master_name, redis_class=aioredis.Redis, db=_database(conn.url), ssl=tls, **kwargs
    )

    async def close_sentinels() -> None:
        for node in sentinel.sentinels:
            await node.aclose()

    return client, close_sentinels


def open_client(
    conn: RedisConnection, *, blocking_pool: int | None = None, **redis_kwargs: Any
) -> tuple[Any, bool, list[Closer]]:
    """A client for `conn` as `redis.mode` says: (client, is_cluster, what else to close after it).

    `blocking_pool` (the HTTP API) caps the connections: a standalone client waits for a free one instead of
    failing (redis-py's default pool refuses past its cap); Cluster and Sentinel clients cap them per node.
    Nothing is sent yet: `check_mode` (or `connect_queue`) finds out whether the server is what the mode says.
    """
    check_database(conn.url)
    kwargs: dict[str, Any] = {"decode_responses": True, **conn.client_kwargs(), **redis_kwargs}
    if blocking_pool is not None and conn.mode is not RedisMode.STANDALONE:
        kwargs["max_connections"] = blocking_pool
    if conn.mode is RedisMode.CLUSTER:
        return _cluster_client(conn, kwargs), True, []
    if conn.mode is RedisMode.SENTINEL:
        client, closer = _sentinel_client(conn, kwargs)
        return client, False, [closer]
    kwargs.setdefault("connection_class", connection_class_for(conn.url))
    if blocking_pool is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            conn.url, max_connections=blocking_pool, timeout=10, **kwargs
        )
        return aioredis.Redis.from_pool(pool), False, []
    return aioredis.Redis.from_url(conn.url, **kwargs), False, []


def _as_dict(reply: Any) -> dict[str, Any]:
    """HELLO's reply as a dict: RESP3 (or redis-py's callback) gives one, RESP2 a flat list of pairs."""
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    items = list(reply or [])
    return {str(k): v for k, v in zip(items[::2], items[1::2], strict=False)}


def client_for(conn: RedisConnection, **redis_kwargs: Any) -> Any:
    """Only the client of `open_client`, for a one-shot command's single-key reads and writes (a Sentinel
    client's connections to the sentinels then last as long as the process)."""
    return open_client(conn, **redis_kwargs)[0]


async def check_mode(client: Any, conn: RedisConnection) -> None:
    """Raise RedisModeError when the server is not the kind `redis.mode` names; RedisError when unreachable."""
    where = conn.where()
    if conn.mode is RedisMode.CLUSTER:
        try:
            await client.initialize()
        except RedisClusterException as exc:
            if "not enabled" in str(exc).lower() or "cluster mode" in str(exc).lower():
                raise RedisModeError(
                    f"redis.mode is cluster, but the Redis at {where} is not a Cluster node (cluster_enabled:0): "
                    "set redis.mode = standalone"
                ) from None
            raise
        return
    try:
        # HELLO (no arguments: the protocol stays) names the server's mode, and ACLs never refuse it.
        hello = _as_dict(await client.execute_command("HELLO"))
    except ResponseError as exc:
        if conn.mode is RedisMode.SENTINEL and "unknown command" in str(exc).lower():
            raise RedisModeError(
                f"redis.mode is sentinel, but {', '.join(conn.sentinels)} (redis.sentinels) answered like a "
                f"Redis server, not a Sentinel: list the sentinels' addresses there ({exc})"
            ) from None
        if "unknown command" in str(exc).lower():
            return  # a server older than Redis 6: a MOVED later still says which setting to change
        raise
    found = str(hello.get("mode", "standalone"))
    if found == "cluster":
        raise RedisModeError(
            f"redis.mode is {conn.mode}, but the Redis at {where} is a Redis Cluster node: set redis.mode = cluster"
        )
    if found == "sentinel":
        raise RedisModeError(
            f"redis.mode is {conn.mode}, but {where} is a Redis Sentinel, not a server: set redis.mode = "
            "sentinel, with redis.sentinels and redis.master_name"
        )


__all__ = ["RedisModeError", "check_mode", "client_for", "open_client"]
