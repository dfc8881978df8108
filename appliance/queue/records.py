"""The stored format of a job's pipe-separated columns and the JSON helpers every reader shares.

These columns are written by the Lua scripts (submit.lua: `meta`; claim.lua: `owner`; includes/finish.lua:
`info`) and read here only, so two versions sharing a Redis during a rolling update agree on one decoder:

- meta:  `shape|service|created_ms|priority|max_retries|timeout_ms|score`
- owner: `token|worker|claimed_ms` while leased (a token never holds '|', claimed_ms is a number, so the worker
  id is whatever lies between, even a '|' written before ids were validated)
- info:  `worker|claimed_ms|finished_ms` after finishing
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from appliance.queue.models import ID_PATTERN, ms_to_datetime

_ID_RE = re.compile(ID_PATTERN)
_T = TypeVar("_T")


def valid_id(value: str) -> bool:
    """True when `value` may name a job, worker or machine (the id rule of models.ID_PATTERN)."""
    return bool(_ID_RE.fullmatch(value))


def split_around(value: str, before: int, after: int) -> list[str] | None:
    """Split `value` on '|' into before + 1 + after parts, the middle one keeping any extra '|'."""
    head = value.split("|", before) if before else [value]
    if len(head) != before + 1:
        return None
    tail = head[-1].rsplit("|", after)
    if len(tail) != after + 1:
        return None
    return head[:-1] + tail


def time_or_none(ms: str | int | float | None) -> datetime | None:
    try:
        return ms_to_datetime(ms)
    except (ValueError, OverflowError, OSError, TypeError):
        return None


@dataclass(frozen=True)
class Meta:
    """What the scripts need of a job without parsing its JSON."""

    shape: str
    service: str
    created_ms: int | None

    @classmethod
    def decode(cls, raw: str | None) -> Meta | None:
        if not raw or raw.count("|") < 2:
            return None
        shape, service, created = raw.split("|")[:3]
        return cls(shape, service, int_or(created, None))


def shape_of_meta(raw: str) -> str:
    """The shape id: the first field, present in every meta value."""
    return raw.split("|", 1)[0]


@dataclass(frozen=True)
class Lease:
    """The `owner` column: who holds a job's lease."""

    token: str
    worker: str
    claimed_ms: int | None

    @classmethod
    def decode(cls, raw: str | None) -> Lease | None:
        parts = split_around(raw, 1, 1) if raw else None
        return cls(parts[0], parts[1], int_or(parts[2], None)) if parts else None


@dataclass(frozen=True)
class Finished:
    """The `info` column: who ran a finished job and when."""

    worker: str
    claimed_ms: int | None
    finished_ms: int | None

    @classmethod
    def decode(cls, raw: str | None) -> Finished | None:
        parts = split_around(raw, 0, 2) if raw else None
        return cls(parts[0], int_or(parts[1], None), int_or(parts[2], None)) if parts else None


def int_or(raw: Any, default: _T) -> int | _T:
    """`raw` as an int (a float string is truncated), or `default` when it is missing or not a number."""
    if raw is None:
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        try:
            return int(float(raw))
        except (TypeError, ValueError, OverflowError):
            return default


def number(value: Any) -> float | None:
    """A finite-or-not float of a stored field, or None when it is missing or not a number."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def json_or(raw: Any, default: Any) -> Any:
    """`raw` parsed as JSON, or `default` when it is missing or not JSON."""
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return default


def json_object(raw: Any) -> dict[str, Any]:
    """`raw` parsed as a JSON object; {} when it is missing, not JSON, or not an object."""
    value = json_or(raw, None)
    return value if isinstance(value, dict) else {}


def entry_ms(entry_id: str) -> int:
    """The time (ms) in a stream entry id `<ms>-<seq>`; 0 for an odd one."""
    return int_or(str(entry_id).split("-", 1)[0], 0)
