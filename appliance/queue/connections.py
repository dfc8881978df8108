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


class HiredisConnection(_HiredisPacking, Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


def connection_class_for(url: str) -> type[AbstractConnection]:
    """The connection class matching a redis://, rediss:// or unix:// URL."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "rediss":
        return HiredisSSLConnection
    if scheme == "unix":
        return HiredisUnixConnection
    return HiredisConnection
