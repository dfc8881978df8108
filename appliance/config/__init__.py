"""Settings of every appliance process, owned here and nowhere else.

- `schema`: the typed settings (pydantic), the only place a setting is declared.
- `queue`: the queue's tunables (`QueueSettings`), part of the schema; the queue is handed them as a parameter.
- `load`: env > config file > defaults, with the environment variable names derived from the schema.
- `doc`: renders docs/configuration.md from the schema (`python -m appliance.config.doc`).

The package imports nothing of the appliance's other packages except `appliance.secrets`
(docs/architecture.md, enforced by import-linter).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from appliance.config.load import load
from appliance.config.schema import (
    KNOWN_CONNECTORS,
    ConfigError,
    ConnectorSettings,
    LoadedSettings,
    MachineSettings,
    PoolRule,
    PoolSettings,
    RedisConnection,
    RedisMode,
    SecretError,
    Settings,
    check_database,
    check_files,
    check_redis_url,
    redacted_dump,
)


def load_settings(
    config_path: str | Path | None = None, env: Any = None, *, open_files: bool = True
) -> LoadedSettings:
    """Load settings: env `APPLIANCE_*` over the config file (argument, else `$APPLIANCE_CONFIG`) over defaults.

    Raises ConfigError naming every bad key, its source and what was expected; also when a configured
    `*_file` cannot be read, so a process fails before it starts anything (unless `open_files` is false: a
    check where those files do not exist, such as the Nix build that validates a NixOS machine's settings).
    """
    return load(config_path, os.environ if env is None else env, open_files=open_files)


__all__ = [
    "KNOWN_CONNECTORS",
    "ConfigError",
    "ConnectorSettings",
    "LoadedSettings",
    "MachineSettings",
    "PoolRule",
    "PoolSettings",
    "RedisConnection",
    "RedisMode",
    "SecretError",
    "Settings",
    "check_database",
    "check_files",
    "check_redis_url",
    "load_settings",
    "redacted_dump",
]
