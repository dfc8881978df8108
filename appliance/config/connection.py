"""The `redis` section: where the queue's Redis is, its URL checked at load, its password kept out of the URL."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from appliance.config.section import Section
from appliance.secrets import credential_name, read_secret, split_url_password


class RedisMode(StrEnum):
    """What kind of Redis deployment `redis.url` (and `redis.nodes` / `redis.sentinels`) points at."""

    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True)
class RedisConnection:
    """Where to connect, with the password kept apart from the URL so it never lands in argv or logs."""

    url: str
    password: str | None
    username: str | None
    tls_ca_file: Path | None
    mode: RedisMode = RedisMode.STANDALONE
    #: Cluster: more seed nodes besides the URL's host (`host:port`).
    nodes: tuple[str, ...] = ()
    #: Sentinel: the sentinels' addresses (`host:port`) and the name of the primary they watch.
    sentinels: tuple[str, ...] = ()
    master_name: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def where(self) -> str:
        """Where this connects, for a person's line (no password): the URL, the seeds or the sentinels."""
        from appliance.secrets import redact_url

        if self.mode is RedisMode.SENTINEL:
            return f"primary {self.master_name!r} of sentinels {','.join(self.sentinels)}"
        if self.mode is RedisMode.CLUSTER and self.nodes:
            return f"{redact_url(self.url)} (cluster seeds +{','.join(self.nodes)})"
        return redact_url(self.url)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.asyncio.Redis.from_url(self.url, **kwargs)`."""
        kwargs: dict[str, Any] = {}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.username is not None:
            kwargs["username"] = self.username
        if self.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(self.tls_ca_file)
        return kwargs


def check_database(url: str) -> None:
    """Raise ValueError naming the problem when `url` selects no valid database number.

    redis-py ignores a path it cannot read (`redis://host/x` connects to db 0, `redis://host/1/2` to db 12):
    a typo would silently share another database's keys.
    """
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if path and not (path.isascii() and path.isdigit()):
            raise ValueError(
                f"the path of {parts.scheme}://… must be a database number (e.g. /0), not /{path}"
            )
    for value in parse_qs(parts.query).get("db", []):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"db={value} in the Redis URL is not a database number")


def check_redis_url(url: str) -> str:
    """`url` if redis-py can connect with it; else ValueError with one line saying what is wrong (password hidden).

    redis-py itself only complains when it connects, with a traceback from deep inside (a scheme it does not know,
    a port beyond 65535 from urllib): checked here, every process and `config check` name the mistake at once.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # urllib: "Port out of range 0-65535", "Port could not be cast to integer ..."
        raise ValueError(str(exc).lower()) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        got = f"{parts.scheme}://" if parts.scheme and "//" in url else "none"
        raise ValueError(
            f"the scheme must be redis://, rediss:// or unix:// (got {got}), e.g. redis://127.0.0.1:6379/0"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket path, e.g. unix:///run/redis.sock")
        return url
    if not parts.hostname:
        raise ValueError("no host, e.g. redis://127.0.0.1:6379/0")
    if port == 0:
        raise ValueError("port 0 is not a port Redis listens on (1-65535)")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"the path must be a database number (e.g. /0), not /{database}")
    return url


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) as (host, port); ValueError naming the problem."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (e.g. 10.0.0.5:26379)")
    return host, int(port)


class RedisSettings(Section):
    """Where the queue's Redis is, and what kind of deployment it is (`redis.mode`).

    - `standalone` (default): one server at `redis.url` (a replica set behind a fixed address counts too).
    - `cluster`: a Redis Cluster; `redis.url` is one seed node, `redis.nodes` more. The client discovers the
      others, follows MOVED/ASK redirections and loads the scripts on every primary. Each queue lives in one
      slot (its keys share the hash tag `{<queue>}`); the database must be 0.
    - `sentinel`: a primary watched by Redis Sentinel; `redis.sentinels` lists them, `redis.master_name` names
      the primary. Clients ask the sentinels where the primary is and follow a failover. The scheme
      (`rediss://` for TLS) and database of `redis.url` still apply; its host and port are not used.

    Credentials (`username`, `password`/`password_file`) and TLS (`rediss://`, `tls_ca_file`) apply to every
    node in all three modes; the sentinels may have their own (`sentinel_username`, `sentinel_password_file`).
    A mode that does not match the server (cluster mode against a standalone server, standalone mode against a
    cluster node) stops a process with one line naming `redis.mode`.
    """

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL (redis://, rediss:// or unix://; port 1-65535; path: a database number), "
        "checked when settings load. "
        "A password written into the URL is moved to `redis.password` so the URL is safe to log.",
    )
    username: str | None = Field(default=None, description="Redis ACL user name (Redis 6+).")
    password: SecretStr | None = Field(
        default=None,
        description="Redis password. Prefer `password_file` or the `redis-password` systemd credential.",
    )
    password_file: Path | None = Field(
        default=None, description="File holding the Redis password (one line)."
    )
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the server of a rediss:// URL."
    )
    mode: RedisMode = Field(
        default=RedisMode.STANDALONE,
        description="standalone, cluster (Redis Cluster: `url` and `nodes` are seeds) or sentinel "
        "(the primary named `master_name`, found through `sentinels`).",
    )
    nodes: list[str] = Field(
        default_factory=list,
        description="Cluster mode: more seed nodes (`host:port`) besides the host of `url`.",
    )
    sentinels: list[str] = Field(
        default_factory=list,
        description='Sentinel mode: the sentinels\' addresses (`host:port`), e.g. `["10.0.0.5:26379"]`.',
    )
    master_name: str | None = Field(
        default=None, description="Sentinel mode: the name the sentinels monitor the primary under."
    )
    sentinel_username: str | None = Field(
        default=None, description="Sentinel mode: ACL user name on the sentinels, when they require one."
    )
    sentinel_password_file: Path | None = Field(
        default=None,
        description="Sentinel mode: file holding the sentinels' password (else the "
        "`redis-sentinel-password` credential; none when neither exists).",
    )
    queue: str = Field(
        default="default",
        min_length=1,
        description="Name of the job queue; all Redis keys of one queue share one hash tag.",
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        value = check_redis_url(value)
        check_database(value)
        return value

    @model_validator(mode="after")
    def _password_out_of_url(self) -> RedisSettings:
        url, password = split_url_password(self.url)
        if password is not None:
            if self.password is not None:
                raise ValueError("the password is given both inside redis.url and as redis.password")
            self.url, self.password = url, SecretStr(password)
        return self

    @model_validator(mode="after")
    def _mode_needs(self) -> RedisSettings:
        for address in [*self.nodes, *self.sentinels]:
            split_address(address)
        if self.mode is RedisMode.SENTINEL:
            if not self.sentinels or not self.master_name:
                raise ValueError("redis.mode = sentinel needs redis.sentinels and redis.master_name")
        elif self.sentinels or self.master_name:
            raise ValueError(
                f"redis.sentinels and redis.master_name need redis.mode = sentinel (is {self.mode})"
            )
        if self.mode is RedisMode.CLUSTER:
            parts = urlsplit(self.url)
            if parts.scheme == "unix":
                raise ValueError("redis.mode = cluster needs a redis:// or rediss:// seed URL, not unix://")
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError("redis.mode = cluster: a Redis Cluster has only database 0")
        elif self.nodes:
            raise ValueError(f"redis.nodes needs redis.mode = cluster (is {self.mode})")
        return self

    def connection(self, env: Any = os.environ) -> RedisConnection:
        """Resolve the password (inline, `password_file`, `$CREDENTIALS_DIRECTORY/redis-password`)."""
        password = read_secret(
            credential_name("redis.password"), file=self.password_file, inline=self.password, env=env
        )
        sentinel_password = None
        if self.mode is RedisMode.SENTINEL:
            sentinel_password = read_secret(
                credential_name("redis.sentinel_password"), file=self.sentinel_password_file, env=env
            )
        return RedisConnection(
            self.url,
            password,
            self.username,
            self.tls_ca_file,
            mode=self.mode,
            nodes=tuple(self.nodes),
            sentinels=tuple(self.sentinels),
            master_name=self.master_name or "",
            sentinel_username=self.sentinel_username,
            sentinel_password=sentinel_password,
        )
