"""The webhook service of one API process: registering a job's webhook, the delivery worker, the dead list and
the tenants' signing secrets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from appliance.config.webhooks import WebhookSettings
from appliance.queue.models import ID_PATTERN
from appliance.webhooks.errors import InvalidTenant
from appliance.webhooks.keys import WebhookKeys
from appliance.webhooks.models import DeadPage, WebhookRequest
from appliance.webhooks.urls import AllowList, check_url

if TYPE_CHECKING:
    from appliance.queue.client import Queue


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not re.fullmatch(ID_PATTERN, tenant):
        raise InvalidTenant(f"tenant {tenant!r} is not a valid id (letters, digits, _ . : -; max 128)")
    return tenant


class Webhooks:
    """Create with `Webhooks.open(queue, settings.webhooks)`."""

    def __init__(self, queue: Queue, settings: WebhookSettings) -> None:
        self.queue = queue
        self.settings = settings
        self.keys = WebhookKeys(queue.name)
        self.allow = AllowList(settings.allow_private)

    @classmethod
    async def open(cls, queue: Queue, settings: WebhookSettings) -> Webhooks:
        """WebhooksUnavailable when the queue writes no event stream (`queue.events` pubsub or none)."""
        raise NotImplementedError

    async def check_url(self, url: str) -> None:
        """WebhookRefused (one-line reason) unless `url` may be called: http(s), no credentials, every address
        it resolves to public or in `webhooks.allow_private`."""
        await check_url(url, self.allow)

    async def register(self, tenant: str, job_id: str, request: WebhookRequest) -> None:
        """Send job `job_id`'s events to `request.url`, signed with `tenant`'s secret. Call it after the job was
        submitted (a job that already ended gets its terminal event all the same). WebhookRefused for a URL
        that may not be called. The caller checks that the job is the tenant's."""
        raise NotImplementedError

    async def run_delivery(self) -> None:
        """The delivery worker of this process: runs until cancelled."""
        raise NotImplementedError

    async def dead(self, tenant: str, limit: int = 50, cursor: str | None = None) -> DeadPage:
        """One page of `tenant`'s given-up deliveries, newest first."""
        raise NotImplementedError

    async def retry_dead(self, tenant: str, ids: list[str] | None = None) -> int:
        """Put `tenant`'s dead deliveries (those of `ids`, or all) back in the outbox; returns how many."""
        raise NotImplementedError

    async def secret(self, tenant: str, rotate: bool = False) -> str:
        """`tenant`'s signing secret (`whsec_...`), made on first use; `rotate` makes a new one (the old one
        still signs, beside it, for `webhooks.max_age_s`, so deliveries in flight verify with either)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the HTTP client (run_delivery's task must be cancelled first)."""
