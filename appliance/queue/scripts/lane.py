"""A lane: one pooled connection kept checked out for script calls made one at a time.

Taking a connection out of redis-py's asyncio pool and giving it back costs about 20 µs a call (a lock each way,
the pool's observability counters, and a probe that the socket holds no unread data): a fifth of a
one-call-at-a-time submit's client time. A lane keeps one connection out of the pool and runs a call on it when
no other call is using it; calls that overlap take the pool as before, so concurrency is unchanged.

The probe is not needed here because the lane never leaves a reply unread: redis-py's `read_response`
disconnects on any exception (a timeout, a lost socket, a cancelled task), and a connection the lane finds
disconnected is reconnected before use. An error reply (ResponseError: NOSCRIPT, NOPERM, ...) was read whole,
so the connection stays. Any other failure gives the connection back to the pool and the next call checks out
a fresh one. Closing the client closes the lane's connection with the pool's others (redis-py's
`disconnect` includes the connections in use).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.exceptions import ResponseError


class Lane:
    """One connection of one pool, for one call at a time (state of one ScriptSet; never shared between
    event loops)."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._conn: Any = None
        self._busy = False

    def usable(self, pool: Any) -> bool:
        """Whether a call on `pool` may take the lane now: it is free, and it serves that pool. A bounded
        (blocking) pool is left alone: a connection held out of it could starve the callers waiting there."""
        if self._busy or not isinstance(pool, ConnectionPool) or isinstance(pool, BlockingConnectionPool):
            return False
        return self._pool is None or self._pool is pool

    async def call(self, pool: Any, *command: Any) -> Any:
        """Send `command` and read its reply on the lane's connection (checked out of `pool` on first use).
        Only when `usable(pool)`. Errors propagate; after any but an error reply the connection is given back."""
        self._busy = True
        conn = self._conn
        try:
            if conn is None:
                conn = await pool.get_connection()
                self._pool, self._conn = pool, conn
            elif not conn.is_connected:
                await conn.connect()
            await conn.send_command(*command)
            return await conn.read_response()
        except ResponseError:
            raise
        except BaseException:
            await self._give_back()
            raise
        finally:
            self._busy = False

    async def _give_back(self) -> None:
        conn, pool = self._conn, self._pool
        self._conn = self._pool = None
        if conn is not None:
            await conn.disconnect(nowait=True)
            await pool.release(conn)
