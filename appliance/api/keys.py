"""API keys: bearer tokens stored only as hashes, each bound to one customer (tenant) and a set of scopes.

A token is `apk_<key id>_<secret>`. Redis holds, per queue, one hash `apikeys:{<queue>}` of key id -> record
(JSON: the token's SHA-256, tenant, scopes, limits); the token itself is printed once by `appliance api keys
create` and kept nowhere. Every request reads its key's record (one HGET), so a revoked key (its field
deleted) is refused by every API process at once. The secret has 256 bits, so a plain SHA-256 is enough: there
is nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from appliance.queue.keys import QueueKeys
from appliance.queue.models import ID_PATTERN

TOKEN_RE = re.compile(r"^apk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


class Scope(StrEnum):
    SUBMIT = "submit"
    READ = "read"
    CANCEL = "cancel"
    #: Fleet views (/v1/stats, /v1/machines, /v1/pools); still only its own tenant's jobs.
    ADMIN = "admin"


class ApiKey(BaseModel):
    """One key's record as stored (the hash, never the token)."""

    id: str
    tenant: str = Field(pattern=ID_PATTERN)
    scopes: list[Scope]
    name: str = ""
    rate_per_s: int | None = Field(None, ge=1)
    max_in_flight: int | None = Field(None, ge=1)
    created_ms: int = 0
    token_sha256: str = ""

    def public(self) -> dict[str, Any]:
        """What `keys list` shows: everything but the hash."""
        return self.model_dump(mode="json", exclude={"token_sha256"})


def keys_hash(keys: QueueKeys) -> str:
    """Outside the queue's prefix (which the API's Redis user may write): the API process only reads it, so a
    compromised API process cannot mint keys. The hash tag keeps it in the queue's Cluster slot."""
    return f"apikeys:{{{keys.name}}}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """Creates, lists, revokes and checks the API keys of one queue."""

    def __init__(self, client: Any, keys: QueueKeys) -> None:
        self.client = client
        self.key = keys_hash(keys)

    async def create(
        self,
        tenant: str,
        scopes: list[Scope],
        *,
        name: str = "",
        rate_per_s: int | None = None,
        max_in_flight: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its token (returned once; only its hash is stored)."""
        key_id = secrets.token_hex(8)
        token = f"apk_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(
            id=key_id,
            tenant=tenant,
            scopes=sorted(set(scopes)),
            name=name,
            rate_per_s=rate_per_s,
            max_in_flight=max_in_flight,
            created_ms=int(time.time() * 1000),
            token_sha256=_digest(token),
        )
        await self.client.hset(self.key, key_id, record.model_dump_json())
        return record, token

    async def list(self) -> list[ApiKey]:
        raw = await self.client.hvals(self.key)
        return sorted((ApiKey.model_validate_json(v) for v in raw), key=lambda k: k.created_ms)

    async def revoke(self, key_id: str) -> bool:
        """Delete the key; False when there is none of that id."""
        return bool(await self.client.hdel(self.key, key_id))

    async def authenticate(self, token: str) -> ApiKey | None:
        """The key a bearer token belongs to, or None (malformed, unknown, revoked, or the wrong secret)."""
        key_id = key_id_of(token)
        return check(token, await self.client.hget(self.key, key_id)) if key_id else None


def key_id_of(token: str) -> str | None:
    """The key id a well-formed token names (None for anything else)."""
    match = TOKEN_RE.match(token)
    return match.group(1) if match else None


def check(token: str, raw: str | None) -> ApiKey | None:
    """The stored record `raw` if `token` is its key's (compared in constant time), else None."""
    if raw is None:
        return None
    try:
        record = ApiKey.model_validate_json(raw)
    except ValidationError:
        return None
    return record if hmac.compare_digest(record.token_sha256, _digest(token)) else None
