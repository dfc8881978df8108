"""What every settings section shares: unknown keys are errors, defaults are validated; and the error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """Invalid configuration. `errors` holds one line per problem, each naming the key, its source and what was expected."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Section(BaseModel):
    """Base of every settings section: a misspelt key fails at start instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
