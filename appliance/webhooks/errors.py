"""What the webhook service refuses, each with a one-line reason."""

from __future__ import annotations


class WebhookError(Exception):
    """Base of the webhook errors."""


class WebhookRefused(WebhookError):
    """A webhook URL that may not be used: bad scheme, credentials in it, or an address that is not public
    (private, loopback, link-local, unspecified, multicast, reserved) and not in `webhooks.allow_private`."""


class WebhooksUnavailable(WebhookError):
    """Delivery cannot run here: the queue writes no event stream (`queue.events` is `pubsub` or `none`)."""


class InvalidTenant(WebhookError):
    """A tenant id that is not a valid id (letters, digits, _ . : -; max 128)."""
