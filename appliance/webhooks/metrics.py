"""The webhook service's metrics, registered on the registry the API process exposes (or a private one). No
tenant, URL or secret is a label: outcomes and event types only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.queued = Counter(
            "appliance_webhook_events_queued_total",
            "Job events put in the webhook outbox, by event type.",
            ["type"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "appliance_webhook_attempts_total",
            "Webhook delivery attempts by outcome: delivered (2xx), retried (failed, tried again later) or "
            "given_up (failed past webhooks.max_age_s, moved to the dead list).",
            ["outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "appliance_webhook_attempt_duration_seconds",
            "Time of one delivery attempt, from the URL check to the receiver's answer (or the failure).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
