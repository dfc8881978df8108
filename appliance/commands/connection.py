"""How every command reaches Redis: URL and queue from flags, then the environment, then the config file.

The password never travels in argv: it comes from the URL in the environment or config, a password file,
or the systemd credential `redis-password`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from appliance.commands import CommandError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RedisTarget:
    url: str
    queue: str
    client_kwargs: dict[str, Any]
    settings: Any  # QueueSettings
    classifier: Any = None  # Callable[[JobSpec], JobSpec] when classifier.enabled

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


def resolve_target(args: argparse.Namespace) -> RedisTarget:
    """Merge flags over the loaded settings; a bad config is a CommandError naming the key."""
    from appliance.config import ConfigError, load_settings
    from appliance.secrets import SecretError, split_url_password

    try:
        settings = load_settings(getattr(args, "config", None)).settings
        connection = settings.redis_connection()
    except (ConfigError, SecretError) as exc:
        raise CommandError(str(exc)) from None
    kwargs = connection.client_kwargs()
    url = connection.url
    if getattr(args, "redis_url", None):
        url, password = split_url_password(args.redis_url)
        if password is not None:
            kwargs["password"] = password
    queue = getattr(args, "queue", None) or settings.redis.queue
    from appliance.pools import classifier_for

    classifier = classifier_for(settings)
    return RedisTarget(
        url=url, queue=queue, client_kwargs=kwargs, settings=settings.queue, classifier=classifier
    )


async def connect_queue(args: argparse.Namespace) -> Any:
    from redis.exceptions import AuthenticationError, RedisError

    from appliance.queue import Queue

    target = resolve_target(args)
    try:
        return await Queue.connect(
            target.url,
            queue_name=target.queue,
            settings=target.settings,
            classifier=target.classifier,
            **target.client_kwargs,
        )
    except AuthenticationError as exc:
        raise CommandError(f"Redis at {target.redacted_url()} refused the credentials: {exc}", 4) from None
    except (RedisError, OSError) as exc:
        raise CommandError(f"cannot reach Redis at {target.redacted_url()}: {exc}", 4) from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
