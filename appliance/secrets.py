"""Secrets: where they come from, and how they are kept out of logs, argv and status output.

A secret (Redis password, API key, S3 secret, monitor token) is looked up in this order:
1. an inline value from the settings (`password`, `api_key`, ...; env or config file),
2. the file named by the matching `*_file` setting,
3. `$CREDENTIALS_DIRECTORY/<name>`, which systemd fills from `LoadCredential=<name>:...` (systemd.exec(5)).
The file forms exist so the value never has to sit in a unit file, an environment block or the Nix store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import SecretStr

#: Shown in place of a secret.
REDACTED = "***"

#: Credential names under $CREDENTIALS_DIRECTORY, by the settings key whose value they supply.
#: Units and the NixOS module use these names in `LoadCredential=`.
CREDENTIALS: dict[str, str] = {
    "redis.password": "redis-password",
    "connectors.openai.api_key": "openai-api-key",
    "connectors.replicate.api_key": "replicate-api-key",
    "connectors.runpod.api_key": "runpod-api-key",
    "storage.s3.secret_access_key": "s3-secret-access-key",
    "monitor.token": "monitor-token",
}

#: Keys of free-form dicts (e.g. a connector's `extra`) whose values are treated as secrets when shown.
_SECRET_KEY_RE = re.compile(r"(pass(word)?|secret|token|api[_-]?key|authorization|credential)", re.IGNORECASE)


class SecretError(Exception):
    """A secret could not be read. The message names the file, never its content."""


def connector_credential(connector: str) -> str | None:
    """The credential a worker of `connector` loads for its API key; None for a connector that calls no keyed
    API (echo, and comfyui on GPU slots). The units' per-worker drop-ins and the NixOS module both use this."""
    return CREDENTIALS.get(f"connectors.{connector}.api_key")


def credential_name(key: str) -> str:
    """The `$CREDENTIALS_DIRECTORY` entry for a settings key; connectors not listed get `<name>-api-key`."""
    if key in CREDENTIALS:
        return CREDENTIALS[key]
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "connectors" and parts[2] == "api_key":
        return f"{parts[1]}-api-key"
    return key.replace(".", "-").replace("_", "-")


def read_secret_file(path: Path) -> str:
    """Read one secret file; a single trailing newline (as `echo` writes it) is not part of the secret."""
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"secret file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise SecretError(f"secret file {path} is a directory") from None
    except UnicodeDecodeError:
        raise SecretError(f"secret file {path} is not valid UTF-8") from None
    except OSError as exc:
        raise SecretError(f"secret file {path} cannot be read: {exc.strerror}") from None
    if data.endswith("\r\n"):
        data = data[:-2]
    elif data.endswith("\n"):
        data = data[:-1]
    if not data:
        raise SecretError(f"secret file {path} is empty")
    return data


def read_secret(
    name: str,
    *,
    file: Path | None = None,
    inline: SecretStr | None = None,
    env: Mapping[str, str] = os.environ,
) -> str | None:
    """Resolve one secret: inline value, then `file`, then `$CREDENTIALS_DIRECTORY/<name>`; None if none is set.

    `name` is the credential name (see `CREDENTIALS`). A file that is named but unreadable is an error, not a
    silent fallback: a typo in a path must not start the service without its password.
    """
    if inline is not None and inline.get_secret_value():
        return inline.get_secret_value()
    if file is not None:
        return read_secret_file(Path(file))
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / name
        if candidate.exists():
            return read_secret_file(candidate)
    return None


def split_url_password(url: str) -> tuple[str, str | None]:
    """Return `url` without its password, and the password (percent-decoded, as redis-py reads it) or None."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    # Rebuilt from the raw host part (not `.port`, which raises on a bad port: the URL check reports that).
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}@{hostinfo}" if user else hostinfo
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), unquote(
        parts.password
    )


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (user names stay: they help debugging and are not secret)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(
        (parts.scheme, f"{user}:{REDACTED}@{hostinfo}", parts.path, parts.query, parts.fragment)
    )


def redact_value(value: Any, key: str = "") -> Any:
    """Make a dumped settings value safe to show: SecretStr → `***`, URL passwords and secret-looking dict keys hidden."""
    if isinstance(value, SecretStr):
        return REDACTED if value.get_secret_value() else ""
    if isinstance(value, Mapping):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v, key) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str):
        if key and _SECRET_KEY_RE.search(key) and not key.endswith("_file") and value:
            return REDACTED
        if "://" in value:
            return redact_url(value)
    return value
