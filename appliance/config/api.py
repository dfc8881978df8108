"""The `api` section: the HTTP job API (`appliance api`): where it listens and the default limits of a key."""

from __future__ import annotations

from pydantic import Field

from appliance.config.section import Section


class ApiSettings(Section):
    host: str = Field(
        default="127.0.0.1", description="Address the HTTP job API binds (loopback by default)."
    )
    port: int = Field(default=8088, ge=0, le=65535, description="Port of the HTTP job API.")
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes serving the port (SO_REUSEPORT: the kernel spreads connections over them); "
        "one process uses one core, so up to one per core the API has. They share every per-key limit (kept "
        "in Redis).",
    )
    rate_per_s: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="Default requests per second of one API key (a key may have its own); past it: 429.",
    )
    max_in_flight: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Default unfinished jobs one API key may have (a key may have its own); past it: 429.",
    )
    max_wait_s: float = Field(
        default=60, gt=0, le=60, description="Longest `?wait=` a submit may ask for, in seconds."
    )
    max_batch: int = Field(
        default=500, ge=1, le=10_000, description="Most jobs one POST /v1/jobs/batch takes."
    )
    idempotency_ttl_s: int = Field(
        default=86400, ge=60, description="How long an Idempotency-Key is remembered, in seconds."
    )
    redis_connections: int = Field(
        default=256,
        ge=4,
        le=10_000,
        description="Redis connections one API process opens at most; a request that finds none free waits "
        "up to 10 s for one (then 503), so bursts of requests or streams queue instead of failing.",
    )
    access_log: bool = Field(
        default=False,
        description="Log one line per HTTP request (aiohttp's access log: logger `aiohttp.access`, at INFO; "
        "never the Authorization header). Off by default: formatting it costs every request CPU time.",
    )
    sse_keepalive_s: float = Field(
        default=15, gt=0, le=300, description="Seconds between keep-alive comments on an idle event stream."
    )
