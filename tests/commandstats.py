"""Counting the Redis commands a test's calls made, from the server's own statistics."""

from __future__ import annotations

from typing import Any


async def command_calls(aredis: Any) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, the scripts' own calls included, the script calls (and
    this INFO and the reset) not."""
    stats = await aredis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    for own in ("evalsha", "eval", "fcall", "info", "config|resetstat"):
        calls.pop(own, None)
    return calls
