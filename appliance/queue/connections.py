"""Redis connections for the queue: redis-py's asyncio client, with hiredis packing the commands.

redis-py's synchronous client packs commands with hiredis when it is installed; its asyncio client always packs
them in Python (about 35 µs for a 40-argument FCALL, against 3 µs). A claim and a complete carry tens of
arguments, so on a busy worker that packing is a large share of the client's CPU. The classes here pack with
hiredis and fall back to redis-py's own packing for anything hiredis refuses (which then raises redis-py's
usual error).
"""

from __future__ import annotations

from collections.abc import Callable
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
