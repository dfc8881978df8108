"""Signed, durable webhooks for the API process: a job's events POSTed to the URL its submitter named.

webhooks = await Webhooks.open(queue, settings.webhooks)
await webhooks.register(tenant, job.id, WebhookRequest(url="https://example.com/hook"))
task = asyncio.create_task(webhooks.run_delivery())   # one delivery worker per API process

Events come from the queue's event stream through a consumer group (feed), wait in a Redis outbox, are leased
by one delivery worker at a time, retried with backoff until `webhooks.max_age_s`, then kept in the tenant's dead
list (docs/webhooks.md).
"""

from appliance.webhooks.errors import InvalidTenant, WebhookError, WebhookRefused, WebhooksUnavailable
from appliance.webhooks.models import (
    TERMINAL_EVENTS,
    DeadDelivery,
    DeadPage,
    Delivery,
    EventType,
    WebhookRequest,
)
from appliance.webhooks.service import Webhooks

__all__ = [
    "TERMINAL_EVENTS",
    "DeadDelivery",
    "DeadPage",
    "Delivery",
    "EventType",
    "InvalidTenant",
    "WebhookError",
    "WebhookRefused",
    "WebhookRequest",
    "Webhooks",
    "WebhooksUnavailable",
]
