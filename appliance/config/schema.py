"""Settings of every appliance process: one typed schema, loaded from env > config file > defaults.

The schema is the only place a setting is declared: `load_settings` derives the environment variable names from it,
and `python -m appliance.config.doc` renders docs/configuration.md from it. Each section lives in its own module
(`connection`, `machine`, `worker`, `connectors`, `storage`, `pools`, `queue`); this one assembles `Settings`. Unknown keys are errors everywhere
(`extra="forbid"`), so a misspelt setting fails at start instead of being silently ignored. Every duration names
its unit in the key (`_s`, `_ms`).

Environment variables (parsed by `appliance.config.load`):
- `APPLIANCE_<SECTION>__<KEY>[__<SUBKEY>...]`, the canonical form: nested keys joined by `__`
  (`APPLIANCE_REDIS__URL`, `APPLIANCE_CONNECTORS__OPENAI__API_KEY_FILE`).
- `APPLIANCE_<SECTION>_<KEY>`, the short form: the same path joined by single `_` (`APPLIANCE_REDIS_URL`,
  `APPLIANCE_HEALTH_PORT`), accepted when exactly one setting has that spelling. Connectors also answer to
  `APPLIANCE_<CONNECTOR>_<KEY>` (`APPLIANCE_OPENAI_API_KEY_FILE`), and `APPLIANCE_LOG_LEVEL` sets `logging.level`.
- Values of lists, tables and whole sections are JSON; an empty value sets an optional setting to null.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from appliance.config.api import ApiSettings
from appliance.config.connection import (
    RedisConnection,
    RedisMode,
    RedisSettings,
    check_database,
    check_redis_url,
)
from appliance.config.connectors import KNOWN_CONNECTORS, ConnectorSettings, _default_connectors
from appliance.config.machine import (
    MACHINE_ID_MAX,
    MACHINE_ID_RE,
    ComfyUISettings,
    HealthSettings,
    MachineSettings,
)
from appliance.config.pools import ClassifierSettings, PoolRule, PoolSettings, _default_pools
from appliance.config.queue import QueueSettings
from appliance.config.section import ConfigError, Section
from appliance.config.storage import S3Settings, StorageSettings
from appliance.config.webhooks import WebhookSettings
from appliance.config.worker import CapabilityOverrides, WorkerSettings
from appliance.secrets import SecretError, credential_name, read_secret

__all__ = [
    "ConfigError",
    "ConnectorSettings",
    "LoadedSettings",
    "RedisConnection",
    "RedisMode",
    "Settings",
    "redacted_dump",
]


class MonitorSettings(Section):
    host: str = Field(default="127.0.0.1", description="Address the monitor UI binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the monitor UI.")
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token required by the monitor; unset allows anyone who can reach it.",
    )
    token_file: Path | None = Field(default=None, description="File holding the monitor token.")

    def resolve_token(self, env: Any = os.environ) -> str | None:
        return read_secret(credential_name("monitor.token"), file=self.token_file, inline=self.token, env=env)


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Log level."
    )


class Settings(Section):
    """Everything an appliance process can be configured with."""

    redis: RedisSettings = Field(
        default_factory=RedisSettings,
        description="Redis connection and queue name. `redis.mode` says what `redis.url` points at: "
        "`standalone` (one server), `cluster` (a Redis Cluster: `url` and `nodes` are seed nodes; the client "
        "discovers the rest and follows MOVED/ASK; each queue lives in one slot) or `sentinel` (the primary "
        "`master_name` watched by `sentinels`; the client follows a failover; the scheme and database of `url` "
        "apply, its host does not). Credentials and TLS apply to every node in each mode. A mode that does not "
        "match the server stops a process with one line naming `redis.mode`; see docs/operations.md.",
    )
    machine: MachineSettings = Field(default_factory=MachineSettings, description="This machine.")
    health: HealthSettings = Field(default_factory=HealthSettings, description="Health and metrics server.")
    queue: QueueSettings = Field(
        default_factory=QueueSettings.model_construct, description="Queue timing and retention."
    )
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="Worker processes.")
    comfyui: ComfyUISettings = Field(
        default_factory=ComfyUISettings, description="ComfyUI instances (gpu machines)."
    )
    connectors: dict[str, ConnectorSettings] = Field(
        default_factory=_default_connectors, description="API connectors by name."
    )
    storage: StorageSettings = Field(default_factory=StorageSettings, description="Where job outputs go.")
    monitor: MonitorSettings = Field(default_factory=MonitorSettings, description="Monitor UI.")
    api: ApiSettings = Field(default_factory=ApiSettings, description="HTTP job API.")
    pools: dict[str, PoolSettings] = Field(
        default_factory=_default_pools, description="Machine pools by name."
    )
    classifier: ClassifierSettings = Field(
        default_factory=ClassifierSettings, description="How jobs are assigned to pools."
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    webhooks: WebhookSettings = Field(
        default_factory=WebhookSettings, description="Webhook delivery (the API process)."
    )

    @field_validator("connectors")
    @classmethod
    def _known_connectors(cls, value: dict[str, ConnectorSettings]) -> dict[str, ConnectorSettings]:
        unknown = sorted(set(value) - set(KNOWN_CONNECTORS))
        if unknown:
            raise ValueError(f"unknown connector {unknown[0]!r} (known: {', '.join(KNOWN_CONNECTORS)})")
        return value

    @model_validator(mode="after")
    def _pools_exist(self) -> Settings:
        # The message starts with the key so the loader can name the key and where it was set.
        references = [("classifier.default_pool", self.classifier.default_pool)]
        references += [
            (f"classifier.rules.{i}.pool", rule.pool) for i, rule in enumerate(self.classifier.rules)
        ]
        if self.machine.pool is not None:
            references.append(("machine.pool", self.machine.pool))
        for key, name in references:
            if name not in self.pools:
                raise ValueError(
                    f"{key}: pool {name!r} is not defined in pools (defined: {', '.join(sorted(self.pools))})"
                )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        # A heartbeat every lease/2 or slower lets a healthy worker's lease expire between two beats: the job
        # is handed to another worker while the first still runs it.
        q = self.queue
        if q.heartbeat_interval_ms * 2 >= q.lease_ms:
            raise ValueError(
                f"queue.heartbeat_interval_ms: {q.heartbeat_interval_ms} ms must be below half of "
                f"queue.lease_ms ({q.lease_ms} ms), or leases expire between heartbeats"
            )
        return self

    def redis_connection(self, env: Any = os.environ) -> RedisConnection:
        """Redis URL (never with a password) plus the password read from wherever it is configured."""
        return self.redis.connection(env)

    def enabled_connectors(self) -> dict[str, ConnectorSettings]:
        return {name: c for name, c in self.connectors.items() if c.enabled and c.slots > 0}


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings plus where each value came from: dotted key → `env:NAME`, `file:PATH` or `default`."""

    settings: Settings
    sources: dict[str, str]
    config_path: Path | None = None
    #: Problems that do not stop a process: an `APPLIANCE_*` variable that is no setting (a typo, most likely).
    warnings: list[str] = field(default_factory=list)

    def source(self, key: str) -> str:
        """Source of `key` or of the nearest enclosing key that was set."""
        while key:
            if key in self.sources:
                return self.sources[key]
            key = key.rpartition(".")[0]
        return "default"


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """Settings as JSON-ready data with every secret replaced by `***` (inline values, URL passwords)."""
    from appliance.secrets import redact_value

    result: dict[str, Any] = redact_value(settings.model_dump(mode="python"))
    return result


def check_files(loaded: LoadedSettings) -> list[str]:
    """Errors for configured files (`*_file` settings) that cannot be read; contents are never shown."""
    errors = []
    for key, value in _file_settings(loaded.settings.model_dump(mode="python")):
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            reason = (
                "does not exist" if isinstance(exc, FileNotFoundError) else (exc.strerror or "cannot be read")
            )
            errors.append(f"{key}: file {value} {reason.lower()} (from {loaded.source(key)})")
    return errors


def _file_settings(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            found.extend(_file_settings(value, dotted + "."))
        elif key.endswith("_file") and value is not None:
            found.append((dotted, Path(value)))
    return found


__all__ += ["KNOWN_CONNECTORS", "SecretError", "check_database", "check_files", "check_redis_url"]
# The sections live in their own modules; they stay importable from here, where they were declared before.
__all__ += [
    "MACHINE_ID_MAX",
    "MACHINE_ID_RE",
    "CapabilityOverrides",
    "ClassifierSettings",
    "ComfyUISettings",
    "HealthSettings",
    "LoggingSettings",
    "MachineSettings",
    "MonitorSettings",
    "PoolRule",
    "PoolSettings",
    "QueueSettings",
    "RedisSettings",
    "S3Settings",
    "Section",
    "StorageSettings",
    "WebhookSettings",
    "WorkerSettings",
]
