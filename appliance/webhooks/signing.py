"""The tenants' signing secrets (in Redis, `whsec_` + base64 of 24 random bytes, as Standard Webhooks writes
them) and the signed headers of one attempt. A secret is never logged, never put in an error message, metrics
or a process's arguments: it leaves this module only as `Webhooks.secret`'s return value and as signatures."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from appliance.webhooks.keys import WebhookKeys

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def headers(delivery_id: str, body: str, signing: list[str], at: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: a signature per secret (the current one first; during a
    rotation the previous one too, space-separated, so receivers that know either accept it)."""
    stamp = datetime.fromtimestamp(int(time.time() if at is None else at), tz=UTC)
    signatures = " ".join(Webhook(s).sign(delivery_id, stamp, body) for s in signing)
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signatures,
    }


class SecretStore:
    def __init__(self, client: Any, keys: WebhookKeys) -> None:
        self.client = client
        self.keys = keys

    async def current(self, tenant: str) -> str:
        """The tenant's secret, made on first use (two processes making it at once agree: HSETNX)."""
        found = await self.client.hget(self.keys.secrets, tenant)
        if found is None:
            await self.client.hsetnx(self.keys.secrets, tenant, new_secret())
            found = await self.client.hget(self.keys.secrets, tenant)
        return str(found)

    async def rotate(self, tenant: str, overlap_ms: int) -> str:
        """A new secret; the old one keeps signing beside it for `overlap_ms` (deliveries already queued, and
        receivers not yet updated, still verify). Returns the new one."""
        fresh = new_secret()
        old = await self.client.hget(self.keys.secrets, tenant)
        until = int(time.time() * 1000) + overlap_ms
        # The old secret is kept first, then replaced: a crash in between leaves the old one current (no
        # MULTI, which a Cluster client does not offer).
        if old is not None:
            await self.client.hset(self.keys.previous_secrets, tenant, f"{until}|{old}")
        await self.client.hset(self.keys.secrets, tenant, fresh)
        return fresh

    async def signing(self, tenant: str) -> list[str]:
        """The secrets a delivery of `tenant` is signed with now: current first, then a rotated-out one still
        within its overlap."""
        current = await self.current(tenant)
        previous = await self.client.hget(self.keys.previous_secrets, tenant)
        out = [current]
        if previous:
            until, _, secret = str(previous).partition("|")
            if until.isdigit() and int(until) > time.time() * 1000 and secret and secret != current:
                out.append(secret)
        return out
