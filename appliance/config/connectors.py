"""The `connectors` section: one table per API connector the worker knows, with its key resolved at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from appliance.config.section import Section
from appliance.secrets import credential_name, read_secret

#: Connectors the worker knows how to run; `connectors.<name>` accepts only these names.
KNOWN_CONNECTORS = ("openai", "replicate", "runpod", "echo")


class ConnectorSettings(Section):
    enabled: bool = Field(default=False, description="Run workers for this connector on api machines.")
    slots: int = Field(
        default=1, ge=0, description="Worker processes for this connector (slots `<name>0`, `<name>1`, ...)."
    )
    concurrency: int = Field(
        default=1, ge=1, description="Jobs one worker process of this connector runs at once."
    )
    base_url: str | None = Field(
        default=None, description="API base URL; unset uses the provider's public endpoint."
    )
    api_key: SecretStr | None = Field(
        default=None, description="API key. Prefer `api_key_file` or the `<name>-api-key` systemd credential."
    )
    api_key_file: Path | None = Field(default=None, description="File holding the API key.")
    endpoint_id: str | None = Field(default=None, description="RunPod serverless endpoint id (runpod only).")
    default_timeout_s: float = Field(
        default=600, gt=0, description="Run-time limit of a job that sets none, in seconds."
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Connector-specific options.")

    def resolve_api_key(self, name: str, env: Any = os.environ) -> str | None:
        """The API key of connector `name`: inline, `api_key_file`, or `$CREDENTIALS_DIRECTORY/<name>-api-key`."""
        return read_secret(
            credential_name(f"connectors.{name}.api_key"),
            file=self.api_key_file,
            inline=self.api_key,
            env=env,
        )


def _default_connectors() -> dict[str, ConnectorSettings]:
    return {name: ConnectorSettings() for name in KNOWN_CONNECTORS}
