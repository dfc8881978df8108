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
the same errors and the same disconnects as redis-py's; anything else takes redis-py's path. The socket timeout
of those reads is one timer per connection (`_Watchdog`), not an `asyncio.timeout` per read: that context (a
Timeout object, a timer pushed on the loop's heap and cancelled) cost ~9 µs per read here.
"""

from __future__ import annotations

import asyncio
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


#: EVALSHA heads packed once per KEYS list (name, sha, number of keys, the keys, and the ARGV prefix of a
#: `PrefixedArgs`), by (sha, id of the KEYS list, id of the prefix or 0): those lists, their bytes. A list is
#: known by identity while the cache holds it (callers reuse the cached KEYS and prefix of a shape and never
#: mutate them). The caller owns the cache (ScriptSet: one per client).
EvalshaHeads = dict[tuple[str, int, int], tuple[list[str], list[Any] | None, bytes]]
EVALSHA_HEADS_MAX = 512


class PrefixedArgs(list[Any]):
    """ARGV whose first items are `prefix`, a list the caller passes, unchanged, with every call of the same KEYS
    list: `pack_evalsha` packs it once with those KEYS (submit.lua's ARGV[1..10], the same for every job of a
    shape: hiredis formats each argument with sprintf, ~800 instructions apiece). Elsewhere it is a list."""

    __slots__ = ("prefix",)

    prefix: list[Any]


def prefixed(prefix: list[Any], rest: list[Any]) -> PrefixedArgs:
    """`prefix + rest` as a PrefixedArgs."""
    args = PrefixedArgs(prefix)
    args += rest
    args.prefix = prefix
    return args


class _HiredisPacking:
    """Mixin for redis.asyncio connection classes: one C call per command instead of a Python loop."""

    def pack_evalsha(
        self, sha: str, keys: list[str], args: list[Any], heads: EvalshaHeads
    ) -> list[bytes] | None:
        """EVALSHA sha len(keys) *keys *args, packed as pack_command packs it, with the part that repeats
        between calls (the script, its KEYS, the prefix of a PrefixedArgs) packed once per KEYS list: a plain
        submit's call packs 5 arguments, not 32. None where hiredis cannot pack it (the caller takes
        send_command)."""
        if _hiredis_pack is None or not keys or self.encoder.encoding != "utf-8":  # type: ignore[attr-defined]
            return None
        prefix = args.prefix if type(args) is PrefixedArgs else None
        memo = (sha, id(keys), id(prefix) if prefix is not None else 0)
        cached = heads.get(memo)
        try:
            if cached is None or cached[0] is not keys or cached[1] is not prefix:
                if len(heads) >= EVALSHA_HEADS_MAX:
                    heads.clear()
                whole = _hiredis_pack(("EVALSHA", sha, len(keys), *keys, *(prefix or ())))
                cached = heads[memo] = (keys, prefix, whole[whole.index(b"\r\n") + 2 :])
            rest = args[len(prefix) :] if prefix is not None else args
            tail = _hiredis_pack(tuple(rest)) if rest else b"*0\r\n"
        except (TypeError, ValueError):
            return None
        count = f"*{3 + len(keys) + len(args)}\r\n".encode()
        return [count, cached[2], tail[tail.index(b"\r\n") + 2 :]]

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
            loop = asyncio.get_running_loop()
            watch: _Watchdog | None = this.__dict__.get("_read_watchdog")
            if watch is None or watch.loop is not loop:
                watch = this._read_watchdog = _Watchdog(loop)
            task = watch.arm(this.socket_timeout)
            this._active_read_timeout = watch  # a maintenance notice may extend it, as redis-py allows
            try:
                return await _fill(this, parser, reader, response)
            except asyncio.CancelledError:
                if watch.fired is task and task is not None and task.uncancel() == 0:
                    raise TimeoutError from None  # the watchdog's cancel, and no other: the read timed out
                raise
            finally:
                watch.task = None
                this._active_read_timeout = None
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


class _Watchdog:
    """The socket timeout of one connection's reads, with one timer for many reads: a read sets its deadline and
    its task (no allocation); the timer, when it fires, moves itself to the current read's deadline, or cancels
    that read's task once the deadline passed (the read then raises TimeoutError, as under `asyncio.timeout`),
    or lapses while no read waits (the next read starts it again). `reschedule` is `asyncio.Timeout`'s, which
    redis-py calls to relax the deadline of the read in progress."""

    __slots__ = ("deadline", "fired", "handle", "loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.fired: asyncio.Task[Any] | None = None
        self.deadline = 0.0
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, timeout: float) -> asyncio.Task[Any] | None:
        self.task = task = asyncio.current_task(self.loop)
        self.fired = None
        self.reschedule(self.loop.time() + timeout)
        return task

    def reschedule(self, when: float | None) -> None:
        self.deadline = float("inf") if when is None else when
        handle = self.handle
        if handle is None or handle.when() > self.deadline:  # else it fires first and moves itself on
            if handle is not None:
                handle.cancel()
            self.handle = None if when is None else self.loop.call_at(self.deadline, self._check)

    def _check(self) -> None:
        self.handle = None
        if self.task is None or self.deadline == float("inf"):
            return
        if self.loop.time() >= self.deadline:
            self.fired = self.task
            self.task.cancel()
        else:
            self.handle = self.loop.call_at(self.deadline, self._check)


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
