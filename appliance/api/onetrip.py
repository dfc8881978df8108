"""`POST /v1/jobs` in one Redis round trip: the key check, the key's rate, its jobs in flight and the queue's own
submit.lua run as one script (submit_one.lua, with submit.lua appended unchanged), atomically.

The script's KEYS must all be known before the call (the job's tenant index among them), so the process keeps
the records of the keys it has verified; the record sent with each call must still be the stored one, so a
revoked key is refused by the very next request. A record is only ever created or deleted, never changed, so a
mismatch means revoked: the entry is dropped and the request answered the ordinary way (401).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from appliance.api.batch import Batcher
from appliance.api.keys import ApiKey, Scope
from appliance.api.limits import Limits
from appliance.api.problems import ProblemError
from appliance.api.scripts import api_script
from appliance.queue import Job, JobSpec, Queue
from appliance.queue.errors import raise_for_code
from appliance.queue.scripts import ScriptSet

NAME = "api_submit_one"
#: Verified keys one process remembers (cleared when full: they are read again on their next request).
MAX_KNOWN = 4096
_STALE, _OVER_RATE, _OVER_IN_FLIGHT = 10, 11, 12


def compose(submit_source: str) -> str:
    """submit_one.lua with the queue's submit.lua (includes expanded) in place of its `-- @submit` line."""
    gate = api_script("submit_one.lua")
    if gate.count("\n-- @submit\n") != 1:
        raise ValueError("submit_one.lua must have one `-- @submit` line")
    return gate.replace("\n-- @submit\n", f"\nlocal function submit_(KEYS, ARGV)\n{submit_source}\nend\n", 1)


class Refused(ProblemError):
    """429: past the key's rate or its limit of unfinished jobs (the script counted the request)."""


class StaleKey(Exception):
    """The key's stored record is not the one this process holds: it was revoked."""


@dataclass(frozen=True)
class Known:
    """A verified key and its record exactly as stored."""

    key: ApiKey
    raw: str


class OneTrip:
    def __init__(self, queue: Queue, keys_hash: str, limits: Limits, rate_per_s: int, in_flight: int) -> None:
        self.queue, self.keys_hash, self.limits = queue, keys_hash, limits
        self.rate_per_s, self.in_flight = rate_per_s, in_flight
        sources = {**queue.scripts.sources, NAME: compose(queue.scripts.sources["submit"])}
        # EVALSHA (loaded when the server lacks it), whatever queue.scripts says: like the API's other scripts.
        self.scripts = ScriptSet(sources=sources, cluster=queue.cluster)
        self._known: dict[str, Known] = {}
        # Submits of one loop turn share a write; not on a Cluster client (a pipeline there is per node).
        self._batcher = None if queue.cluster else Batcher(self.scripts, queue.client, NAME)

    def known(self, key_id: str, token: str) -> Known | None:
        """The remembered key `key_id` when `token` is its token (compared in constant time)."""
        found = self._known.get(key_id)
        if found is None:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        return found if hmac.compare_digest(found.key.token_sha256, digest) else None

    def remember(self, key: ApiKey, raw: str) -> None:
        if Scope.SUBMIT not in key.scopes and Scope.ADMIN not in key.scopes:
            return  # refused with 403 the ordinary way
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known[key.id] = Known(key, raw)

    async def submit(self, known: Known, spec: JobSpec) -> Job:
        """Check the key, count the request, admit and submit the job: one script call. Refused (429) past a
        limit; StaleKey when the key is no longer stored (nothing was counted or written)."""
        key = known.key
        job, (_, submit_keys, submit_args) = self.queue.producer.prepare(spec)
        keys = [
            self.keys_hash,
            self.limits.rate_key(key.id),
            self.limits.inflight_key(key.id),
            self.queue.keys.state,
            *submit_keys,
        ]
        rate = key.rate_per_s or self.rate_per_s
        limit = key.max_in_flight or self.in_flight
        args: list[Any] = [key.id, known.raw, rate, limit, *submit_args]
        if self._batcher is not None:
            code, *more = await self._batcher.call(keys, args)
        else:
            code, *more = await self.scripts.call(self.queue.client, NAME, keys, args)
        code = int(code)
        if code == _STALE:
            self._known.pop(key.id, None)
            raise StaleKey(key.id)
        if code == _OVER_RATE:
            detail = f"over this key's limit of {rate} requests per second"
            raise Refused(429, detail, headers={"Retry-After": str(max(1, -(-int(more[1]) // 1000)))})
        if code == _OVER_IN_FLIGHT:
            detail = f"this key has {int(more[0])} unfinished jobs; 1 more would pass its limit of {limit}"
            raise Refused(429, detail, headers={"Retry-After": "1"})
        raise_for_code(code, job.id)
        return job
