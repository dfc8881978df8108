"""Webhook delivery settings (the API process's delivery worker, appliance.webhooks). Durations name their unit."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from appliance.config.section import Section


class WebhookSettings(Section):
    """Where webhooks may go, how long and how hard their delivery is tried."""

    allow_private: list[str] = Field(
        default_factory=list,
        description=(
            "Networks (CIDR, e.g. `10.0.0.0/8`, `::1/128`), addresses and host names a webhook URL may reach although they "
            "are private, loopback, link-local or otherwise not public; empty refuses every such address."
        ),
    )
    max_age_s: int = Field(
        86_400,
        ge=1,
        description="How long a delivery is retried after its event before it goes to the dead list (s).",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=300, description="Time limit of one delivery attempt, connect to response (s)."
    )
    backoff_base_s: float = Field(
        5.0, gt=0, description="Delay before the first retry; each further retry doubles it, with jitter (s)."
    )
    backoff_cap_s: float = Field(3_600.0, gt=0, description="Longest delay between two attempts (s).")
    concurrency: int = Field(
        8, ge=1, le=256, description="Deliveries one API process sends at the same time."
    )
    poll_interval_ms: int = Field(
        1_000,
        ge=10,
        description="How often the delivery worker looks for due retries and expired leases (ms).",
    )
    dead_keep: int = Field(
        1_000, ge=1, description="Given-up deliveries kept per tenant (the oldest go first)."
    )
    max_result_bytes: int = Field(
        65_536,
        ge=0,
        description="Largest job result copied into an event body; a bigger one is left out (`result_omitted`).",
    )

    @field_validator("allow_private")
    @classmethod
    def _networks_or_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)  # a CIDR or a single address
                continue
            except ValueError:
                pass
            if "/" in entry or not entry or any(c in entry for c in " :@?#[]"):
                raise ValueError(
                    f"{entry!r} is not a network (CIDR like 10.0.0.0/8), an address or a host name"
                )
        return value

    @model_validator(mode="after")
    def _cap_over_base(self) -> WebhookSettings:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be at least backoff_base_s")
        return self
