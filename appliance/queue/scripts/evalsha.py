"""EVALSHA on a pooled connection without redis-py's per-command wrapping (ScriptSet's call path)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Work a caller does while its script runs in Redis (ScriptSet.call: once per send, so it must be idempotent).
Meanwhile = Callable[[], object] | None


async def evalsha(
    client: Any,
    sha: str,
    keys: list[str],
    args: list[Any],
    spares: weakref.WeakKeyDictionary[Any, Any],
    meanwhile: Meanwhile = None,
    heads: dict[Any, Any] | None = None,
) -> Any:
    """EVALSHA on a connection of the client's pool, without redis-py's per-command wrapping (retries of a
    command that may have run, timing hooks): a third of a one-call-at-a-time submit's client time. A client
    that is not a plain pooled one (a Cluster, a single-connection client) takes the ordinary path.

    A connection that just answered normally is kept out of the pool as the pool's spare, for the next call:
    taking one from redis-py's pool and giving it back (its lock, its checks, its metrics hooks) cost as much
    client time as the call itself. Anything else (an error reply, a dead connection, a cancelled call that
    may have left a reply unread) goes back to the pool, whose checks deal with it, as before."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(client, "connection", None) is not None or not isinstance(client, Redis):
        return await client.evalsha(sha, len(keys), *keys, *args)
    conn = spares.pop(pool, None) or await pool.get_connection()
    answered = False
    try:
        packed = None
        if heads is not None and hasattr(
            conn, "pack_evalsha"
        ):  # the queue's connection classes (connections.py)
            packed = conn.pack_evalsha(sha, keys, args, heads)  # KEYS packed once per list
        if packed is not None:
            await conn.send_packed_command(packed)
        else:
            await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
        if meanwhile is not None:  # sent, reply not read yet: the caller's own work overlaps the script's
            meanwhile()
        reply = await conn.read_response()  # on an error it disconnects, so the pool reconnects it
        answered = True
        return reply
    except (RedisConnectionError, RedisTimeoutError):
        # A pooled connection that died (a Redis restart): redis-py's path retries as it always did. The pool's
        # idle connections went with it: closed now, each reconnects when next taken (the pool's own check does
        # not notice a peer that closed an idle socket, and the spare kept the fresh one out of its rotation).
        await pool.disconnect(inuse_connections=False)
    finally:
        if answered and pool not in spares:
            spares[pool] = conn
        else:
            await pool.release(conn)
    return await client.evalsha(sha, len(keys), *keys, *args)
