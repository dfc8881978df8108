"""Redis connections for the queue: redis-py's asyncio client, with hiredis packing the commands and a cheaper
write.

redis-py's synchronous client packs commands with hiredis when it is installed; its asyncio client always packs
them in Python (about 35 µs for a 40-argument FCALL, against 3 µs). A claim and a complete carry tens of
arguments, so on a busy worker that packing is a large share of the client's CPU. The classes here pack with
hiredis and fall back to redis-py's own packing for anything hiredis refuses (which then raises redis-py's
usual error).

redis-py also wraps every write in `asyncio.wait_for(..., socket_timeout)`, which on Python 3.11 starts a task per
command: about a third of a one-call-at-a-time submit's client time. A write lands in the transport's buffer at
once; only when the buffer is over its high-water mark (the server is not reading) can draining block, so only
then is the timeout needed. The classes here write directly and fall back to redis-py's path in that case.

Reading a reply through redis-py's `read_response` goes through three layers (the connection's, the parser's,
its socket read), each with its own checks: about 10 µs of a submit's client CPU. The classes here read the
common case (a decoded reply, the socket timeout, nothing unusual asked) in one place, with the same timeout,
the same errors and the same disconnects as redis-py's; anything else takes redis-py's path.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # what the hiredis reader returns while a reply is incomplete (redis-py's own marker)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _INCOMPLETE
    from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR as _CLOSED
except ImportError:  # pragma: no cover - another redis-py layout: its own path only
    _INCOMPLETE, _CLOSED = None, "Connection closed by server."

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency; a bare redis-py still works
    _hiredis_pack = None


class _HiredisPacking:
    """Mixin for redis.asyncio connection classes: one C call per command instead of a Python loop."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _hiredis_pack is not None and self.encoder.encoding == "utf-8":  # type: ignore[attr-defined]
            first = args[0]
            if isinstance(first, str) and " " in first:
                args = (*first.split(), *args[1:])
            try:
                return [_hiredis_pack(args)]
            except (TypeError, ValueError):
                pass
        return super().pack_command(*args)  # type: ignore[misc, no-any-return]

    async def send_packed_command(
        self, command: str | bytes | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer: asyncio.StreamWriter | None = getattr(self, "_writer", None)
        if (
            writer is None
            or not isinstance(command, list)
            or getattr(self, "health_check_interval", None)
            or writer.transport.is_closing()
        ):
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        transport = writer.transport
        if transport.get_write_buffer_size() >= transport.get_write_buffer_limits()[1]:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]  # may block: timed
            return
        try:
            writer.writelines(command)
        except OSError:  # redis-py's path reports it (ConnectionError) and disconnects
            await super().send_packed_command(command, check_health)  # type: ignore[misc]


class _DirectReads:
    """Mixin for redis.asyncio connection classes: read a reply without redis-py's layers (module doc)."""

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature, passed on unchanged
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        parser: Any = getattr(self, "_parser", None)
        reader = getattr(parser, "_reader", None)
        if (
            disable_decoding
            or timeout is not None
            or push_request
            or not disconnect_on_error
            or _INCOMPLETE is None
            or reader is None
            or not getattr(parser, "_connected", False)
            or getattr(self, "health_check_interval", None)
        ):
            return await super().read_response(  # type: ignore[misc]
                disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        response = reader.gets()
        if response is _INCOMPLETE or _is_push(parser, response) or _is_connection_error(response):
            response = await self._read_reply(parser, reader, response)
        if isinstance(response, ResponseError):
            raise response from None
        return response

    async def _read_reply(self, parser: Any, reader: Any, response: Any) -> Any:
        """The rest of a reply, under the socket timeout; errors and disconnects as redis-py's read_response."""
        this: Any = self
        try:
            if this.socket_timeout is None:
                return await _fill(this, parser, reader, response)
            deadline: _ReadDeadline | None = this.__dict__.get("_read_deadline")
            if deadline is None:
                deadline = this._read_deadline = _ReadDeadline()
            task = deadline.start(this.socket_timeout)
            this._active_read_timeout = deadline  # a maintenance notice may extend it, as redis-py allows
            try:
                return await _fill(this, parser, reader, response)
            except asyncio.CancelledError:
                if deadline.expired(task):
                    raise TimeoutError from None
                raise
            finally:
                this._active_read_timeout = None
                deadline.task = None
        except TimeoutError:
            await this.disconnect(nowait=True)
            raise RedisTimeoutError(f"Timeout reading from {this._host_error()}") from None
        except OSError as exc:
            await this.disconnect(nowait=True)
            raise RedisConnectionError(
                f"Error while reading from {this._host_error()} : {exc.args}"
            ) from None
        except BaseException:
            await this.disconnect(nowait=True)
            raise


class _ReadDeadline:
    """The socket timeout of one connection's reads, on one timer handle re-armed only when it fires: a timeout
    context per read made and cancelled a timer handle for every reply (a worker's round trip reads one).
    Expiring cancels the reading task, which `expired` turns into TimeoutError as `asyncio.timeout` does."""

    __slots__ = ("task", "when", "handle", "fired", "cancelling")

    def __init__(self) -> None:
        #: The task reading now (None between reads) and its deadline (loop time).
        self.task: asyncio.Task[Any] | None = None
        self.when = math.inf
        self.handle: asyncio.TimerHandle | None = None
        #: This read's deadline passed and its task was cancelled for it.
        self.fired = False
        self.cancelling = 0

    def start(self, timeout: float) -> asyncio.Task[Any] | None:
        """A read starts in the current task and may last `timeout` seconds."""
        loop = asyncio.get_running_loop()
        task = self.task = asyncio.current_task()
        self.fired = False
        self.cancelling = task.cancelling() if task is not None else 0
        self.reschedule(loop.time() + timeout)
        return task

    def reschedule(self, when: float | None) -> None:
        """Move this read's deadline (`asyncio.Timeout.reschedule`, which redis-py's maintenance notices call)."""
        self.when = math.inf if when is None else when
        handle = self.handle
        if handle is not None and handle.when() <= self.when:
            return  # it fires first and re-arms for the deadline then
        if handle is not None:
            handle.cancel()
        self.handle = None if when is None else asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self.handle = None
        task = self.task
        if task is None or self.when == math.inf:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self.when:
            self.handle = loop.call_at(self.when, self._fire)
        elif not task.done():
            self.fired = True
            task.cancel()

    def expired(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether the CancelledError out of this read is the deadline's own (then it is uncancelled)."""
        if not self.fired or task is None:
            return False
        self.fired = False
        return task.uncancel() <= self.cancelling


async def _fill(conn: Any, parser: Any, reader: Any, response: Any) -> Any:
    """Read until `reader` holds a whole reply that is not a push notice (those go to the parser's handler,
    as redis-py does for a reply not asked to include them)."""
    while True:
        while response is _INCOMPLETE:
            data = await conn._reader.read(parser._read_size)
            if not data:
                raise RedisConnectionError(_CLOSED)
            reader.feed(data)
            response = reader.gets()
        if _is_connection_error(response):
            raise response[0] if isinstance(response, list) else response
        if not _is_push(parser, response):
            return response
        await parser.handle_push_response(response)
        response = reader.gets()


def _is_push(parser: Any, response: Any) -> bool:
    kind = getattr(parser, "_hiredis_PushNotificationType", None)
    return kind is not None and isinstance(response, kind)


def _is_connection_error(response: Any) -> bool:
    if isinstance(response, RedisConnectionError):
        return True
    return isinstance(response, list) and bool(response) and isinstance(response[0], RedisConnectionError)


class HiredisConnection(_HiredisPacking, _DirectReads, Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, _DirectReads, SSLConnection):
    pass


class HiredisUnixConnection(_HiredisPacking, _DirectReads, UnixDomainSocketConnection):
    pass


def connection_class_for(url: str) -> type[AbstractConnection]:
    """The connection class matching a redis://, rediss:// or unix:// URL."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "rediss":
        return HiredisSSLConnection
    if scheme == "unix":
        return HiredisUnixConnection
    return HiredisConnection
