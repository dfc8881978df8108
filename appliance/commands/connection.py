"""How every command reaches Redis: URL and queue from flags, then the environment, then the config file.

The password never travels in argv: it comes from the URL in the environment or config, a password file,
or the systemd credential `redis-password`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from appliance.commands import CommandError, ExitCode

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RedisTarget:
    url: str
    queue: str
    client_kwargs: dict[str, Any]
    settings: Any  # QueueSettings
    classifier: Any = None  # Callable[[JobSpec], JobSpec] when classifier.enabled
    #: The whole connection (mode, seeds, sentinels, credentials) with `--redis-url` applied.
    connection: Any = None  # RedisConnection
    all_settings: Any = None  # Settings

    def redacted_url(self) -> str:
        from appliance.secrets import redact_url

        return redact_url(self.url)


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        help="Redis URL (default: $APPLIANCE_REDIS_URL, the config file, "
        f"else {DEFAULT_REDIS_URL}); put passwords in a file, not here",
    )
    parser.add_argument(
        "--queue", help="queue name (default: $APPLIANCE_REDIS__QUEUE / config, else 'default')"
    )
    parser.add_argument("--config", help="config file (TOML, YAML or JSON; default: $APPLIANCE_CONFIG)")


def checked_url_flag(url: str) -> str:
    """`--redis-url`, checked as strictly as `redis.url` in the settings."""
    from appliance.config import check_redis_url
    from appliance.secrets import redact_url

    try:
        return check_redis_url(url)
    except ValueError as exc:
        raise CommandError(f"--redis-url: {exc}; got {redact_url(url)!r}") from None


def loaded_settings(args: argparse.Namespace) -> Any:
    """The settings `args.config` names (a LoadedSettings): those `appliance.cli` loaded for the log level when
    it could, else loaded here (raising ConfigError or SecretError)."""
    loaded = getattr(args, "loaded_settings", None)
    if loaded is None:
        from appliance.config import load_settings

        loaded = load_settings(getattr(args, "config", None))
    return loaded


def resolve_target(args: argparse.Namespace) -> RedisTarget:
    """Merge flags over the loaded settings; a bad config is a CommandError naming the key."""
    from appliance.config import ConfigError
    from appliance.secrets import SecretError, split_url_password

    try:
        settings = loaded_settings(args).settings
        connection = settings.redis_connection()
    except (ConfigError, SecretError) as exc:
        raise CommandError(str(exc)) from None
    if getattr(args, "redis_url", None):
        url, password = split_url_password(checked_url_flag(args.redis_url))
        connection = replace(
            connection, url=url, password=connection.password if password is None else password
        )
    queue = getattr(args, "queue", None) or settings.redis.queue
    classifier = None
    if (
        settings.classifier.enabled
    ):  # appliance.pools only then: every client command would pay for its import
        from appliance.pools import classifier_for

        classifier = classifier_for(settings)
    return RedisTarget(
        url=connection.url,
        queue=queue,
        client_kwargs=connection.client_kwargs(),
        settings=settings.queue,
        classifier=classifier,
        connection=connection,
        all_settings=settings,
    )


async def open_redis(target: RedisTarget) -> Any:
    """A bare client of `target` as `redis.mode` says (a Cluster client in cluster mode), checked: for commands
    that touch fleet keys or load scripts rather than use one queue. Errors as `connect_queue`'s."""
    from redis.exceptions import RedisError

    from appliance.queue.redisclient import RedisModeError, check_mode, open_client

    # A Sentinel client's connections to the sentinels live as long as the command (one-shot: not closed).
    client, _, _closers = open_client(target.connection)
    try:
        await check_mode(client, target.connection)
    except RedisModeError as exc:
        await client.aclose()
        raise CommandError(str(exc)) from None
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise redis_failure(exc, target.url) from None
    return client


def redis_failure(exc: BaseException, url: str = "", doing: str = "") -> CommandError:
    """A Redis error as the one line (exit 4) a person reads: unreachable, credentials refused, NOPERM, OOM, ..."""
    from appliance.rediserrors import describe_redis_error
    from appliance.secrets import redact_url

    return CommandError(describe_redis_error(exc, redact_url(url) if url else "", doing), ExitCode.REDIS)


async def connect_queue(args: argparse.Namespace, **redis_kwargs: Any) -> Any:
    """The queue the command's flags and settings name, through the one connection factory; every failure is
    a CommandError (one line). `redis_kwargs` go to the client (the API's `blocking_pool`)."""
    from redis.exceptions import RedisError

    from appliance.queue import factory
    from appliance.queue.scripts import ScriptLibraryError

    target = resolve_target(args)
    try:
        return await factory.connect_queue(
            target.all_settings,
            queue_name=target.queue,
            connection=target.connection,
            classifier=target.classifier,
            **redis_kwargs,
        )
    except factory.RedisModeError as exc:
        raise CommandError(str(exc)) from None
    except ScriptLibraryError as exc:
        raise CommandError(str(exc), ExitCode.REDIS) from None
    except (RedisError, OSError) as exc:
        raise redis_failure(exc, target.connection.where()) from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
