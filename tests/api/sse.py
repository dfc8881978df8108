"""A minimal Server-Sent Events reader for the tests (the format of the HTML Living Standard: `id:`, `event:`,
`data:` lines, a blank line ends an event, `:` lines are comments)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Event:
    id: str | None
    event: str
    data: Any


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    entry: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in entry:
                yield Event(entry.get("id"), entry.get("event", "message"), json.loads(entry["data"]))
            entry = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            entry[name] = value.removeprefix(" ")
