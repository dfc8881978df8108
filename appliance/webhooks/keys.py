"""Every Redis key of the webhook service, in one place.

The keys carry the queue's hash tag `{<queue>}`, so every script's keys (and the queue's event stream the
feed reads) live in one Cluster slot, but not the queue's prefix `appliance:{<queue>}:`: the queue's roles
(workers, the monitor) reach everything under that prefix, and the signing secrets must stay out of their reach.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The consumer group of the webhook feed on the queue's event stream.
GROUP = "webhooks"


@dataclass(frozen=True)
class WebhookKeys:
    queue: str

    @property
    def prefix(self) -> str:
        return f"webhooks:{{{self.queue}}}:"

    @property
    def hooks(self) -> str:
        """HASH job id -> registration JSON (tenant, url, events), until the job's terminal event is queued."""
        return self.prefix + "hooks"

    @property
    def outbox(self) -> str:
        """HASH delivery id -> Delivery JSON, until delivered or given up."""
        return self.prefix + "outbox"

    @property
    def due(self) -> str:
        """ZSET delivery id -> when its next attempt is due (ms)."""
        return self.prefix + "due"

    @property
    def leases(self) -> str:
        """ZSET delivery id -> lease deadline (ms) while a delivery worker sends it."""
        return self.prefix + "leases"

    @property
    def owner(self) -> str:
        """HASH delivery id -> fencing token of the worker that leased it."""
        return self.prefix + "owner"

    def dead(self, tenant: str) -> str:
        """ZSET delivery id -> when it was given up (ms): one tenant's dead list."""
        return self.prefix + f"dead:{tenant}"

    @property
    def dead_records(self) -> str:
        """HASH delivery id -> given-up Delivery JSON (read only through a tenant's dead list)."""
        return self.prefix + "dead_records"

    @property
    def secrets(self) -> str:
        """HASH tenant -> signing secret (`whsec_...`)."""
        return self.prefix + "secrets"

    @property
    def previous_secrets(self) -> str:
        """HASH tenant -> `<until ms>|<secret>`: a rotated-out secret still signs until then."""
        return self.prefix + "previous_secrets"
