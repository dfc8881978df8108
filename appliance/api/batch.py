"""Calls of one script made in the same turn of the event loop go to Redis in one write (a pipeline): under load
many submits are handled at once, and one write and one read for all of them cost the process, and Redis, far
less than a write and a read each. Each call keeps its own result and its own error; a call that found its
script missing (a Redis restart) runs again on its own, which loads it.

The batch is written on one connection of the client's pool and its replies read from it, without redis-py's
Pipeline object, whose command stack, retry wrapper and per-reply handling cost more than the EVALSHAs
themselves (measured here: 49 against 28 µs of CPU per call in batches of 4, 23 against 16 in batches of 16). A connection that fails on the way is dropped, and every
call of the batch gets the error, as from a Pipeline: the batch is not sent again (its scripts may have run)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ResponseError

from appliance.queue.scripts import ScriptSet, is_missing_script

Pending = tuple[list[str], list[Any], "asyncio.Future[Any]"]


class Batcher:
    def __init__(self, scripts: ScriptSet, client: Any, name: str) -> None:
        self.scripts, self.client, self.name = scripts, client, name
        self._pending: list[Pending] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._many(batch))
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _one(self, pending: Pending) -> None:
        keys, args, future = pending
        try:
            result = await self.scripts.call(self.client, self.name, keys, args)
        except BaseException as exc:  # handed to the caller, whatever it is
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def _many(self, batch: list[Pending]) -> None:
        commands = [("EVALSHA", self.scripts.sha(self.name), len(k), *k, *a) for k, a, _ in batch]
        try:
            results = await self._send(commands)
        except BaseException as exc:  # the connection failed: every call of the batch gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        again = []
        for pending, result in zip(batch, results, strict=True):
            future = pending[2]
            if isinstance(result, ResponseError) and is_missing_script(result):
                again.append(pending)
            elif future.done():
                continue
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        for pending in again:
            await self._one(pending)

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands in one write on one connection of the pool, and their replies (an error reply as its
        ResponseError); a connection that fails on the way is disconnected before it goes back to the pool."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            results: list[Any] = []
            for _ in commands:
                try:
                    results.append(await conn.read_response())
                except ResponseError as exc:
                    results.append(exc)
            return results
        except BaseException:
            await conn.disconnect()  # replies may still be on their way: nobody else may read them
            raise
        finally:
            await pool.release(conn)
