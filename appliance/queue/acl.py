"""Redis ACL roles of the appliance: what each kind of client may run, on which keys and channels.

One Redis can serve several tenants (queues) only if no tenant's user reaches another queue by any path: keys,
scripts, the Function library, pub/sub. The rules here are allow-lists (`-@all` then the exact commands), so
commands that list or walk the whole keyspace (SCAN, KEYS, RANDOMKEY, PUBSUB CHANNELS, CLIENT LIST, INFO) are
never granted, and key and channel patterns confine each user to its queues (docs/security.md, "Redis").

Roles:
- deployer: loads the Function library and the scripts (`appliance redis setup`); no keys, no channels.
- machine: workers and the supervisor of one machine: every queue script, its queues, its own machine keys.
- submitter: submit, get, wait, list, stats, cancel on its queues; it can run only what submit and cancel need.
- monitor: read-only (`%R~`) on its queues and the fleet's machine records; subscribes, never publishes.

A script runs with its caller's permissions (Redis checks every `redis.call` against the ACL), so a user allowed
EVALSHA may run any script of its own making: its rights are exactly the commands and patterns below, which is
why they are listed per role rather than granted by category.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from enum import StrEnum

from appliance.config.queue import ChannelsMode, ScriptsMode
from appliance.queue import registry as machine_keys
from appliance.queue.keys import (
    CHANNEL_CLAIMED,
    CHANNEL_COMPLETED,
    CHANNEL_FAILED,
    CHANNEL_PROGRESS,
    CHANNEL_SUBMITTED,
    QueueKeys,
)
from appliance.queue.scripts import SCRIPT_NAMES, load_sources

LIFECYCLE_CHANNELS = (CHANNEL_SUBMITTED, CHANNEL_CLAIMED, CHANNEL_PROGRESS, CHANNEL_COMPLETED, CHANNEL_FAILED)
_MACHINE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Role(StrEnum):
    DEPLOYER = "deployer"
    MACHINE = "machine"
    SUBMITTER = "submitter"
    MONITOR = "monitor"


#: Every connection pings; AUTH and HELLO need no grant. redis-py also names itself with CLIENT SETINFO (Redis
#: 7.2+), which is not granted (Redis 7.0 does not know it, so the rule would not apply there): refused, and
#: ignored by redis-py.
CONNECTION = ("ping",)
#: What the clients read outside scripts (Queue.get, list_jobs, stats, the monitor's feed).
READS = (
    "time",
    "exists",
    "get",
    "hget",
    "hmget",
    "hexists",
    "hgetall",
    "hlen",
    "zscore",
    "zmscore",
    "zrange",
    "zrevrange",
    "zrangebyscore",
    "zrangebylex",
    "zlexcount",
    "hkeys",
    "zcard",
    "zcount",
    "smembers",
    "sismember",
    "smismember",
    "xrange",
    "xrevrange",
    "xread",
    "lrange",
    "hscan",
    "sscan",
    "zscan",
)
#: ssubscribe/sunsubscribe: a Cluster's sharded channels (the wake hub, `job wait`, the monitor).
SUBSCRIBING = ("subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe")
#: Writes the machine layer makes outside scripts (registration, status, events, worker classes and status).
MACHINE_WRITES = (
    "set",
    "del",
    "unlink",
    "expire",
    "pexpire",
    "hset",
    "hdel",
    "sadd",
    "zadd",
    "zrem",
    "rpush",
    "ltrim",
    "publish",
    "multi",
    "exec",
    "discard",
)


def script_commands(names: Sequence[str]) -> set[str]:
    """The Redis commands the named queue scripts call (read from their sources, includes expanded)."""
    sources = load_sources()
    found: set[str] = set()
    for name in names:
        # Also `rcall(x and 'SPUBLISH' or 'PUBLISH', ...)`: every quoted command name a call may pick.
        for call in re.findall(r"(?:rcall|redis\.call)\(([^,]*),", sources[name]):
            found |= {c.lower() for c in re.findall(r"'([A-Z]+)'", call)}
    return found


def _script_running(scripts: ScriptsMode) -> list[str]:
    # WAIT: durable acknowledgement (queue.durable_replicas) follows submits and completions with one.
    commands = ["evalsha", "script|load", "wait"]
    if scripts is ScriptsMode.FUNCTIONS:
        commands += ["fcall", "function|list"]
    return commands


def rules(
    role: Role,
    queues: Sequence[str],
    *,
    channels: ChannelsMode = ChannelsMode.SHARED,
    scripts: ScriptsMode = ScriptsMode.EVAL,
    machine_id: str | None = None,
) -> list[str]:
    """The ACL rules of `role` for `queues`, after `resetkeys resetchannels -@all` (see `setuser`)."""
    names = [QueueKeys(q).name for q in queues]  # validates each name
    if role is not Role.DEPLOYER and not names:
        raise ValueError(f"the {role.value} role needs at least one queue")
    queue_keys = [f"~{QueueKeys(q).prefix}*" for q in names]
    queue_channels = [f"&{QueueKeys(q).prefix}*" for q in names]
    shared = [f"&{c}" for c in LIFECYCLE_CHANNELS] if channels is ChannelsMode.SHARED else []
    if role is Role.DEPLOYER:
        commands = [*CONNECTION, "function|load", "function|list", "script|load"]
        return [f"+{c}" for c in commands]
    if role is Role.SUBMITTER:
        commands = sorted(
            {
                *CONNECTION,
                *READS,
                *SUBSCRIBING,
                *_script_running(scripts),
                *script_commands(("submit", "cancel")),
            }
        )
        patterns = [*queue_keys, *queue_channels, *shared]
    elif role is Role.MONITOR:
        commands = sorted({*CONNECTION, *READS, *SUBSCRIBING, *_script_running_ro(scripts)})
        patterns = [
            *(f"%R{p}" for p in queue_keys),
            f"%R~{machine_keys.MACHINES_KEY}",
            "%R~machine:*",
            *queue_channels,
            *shared,
            # PSUBSCRIBE is checked literally against the user's patterns, so the monitor's pattern is named.
            f"&{machine_keys.status_channel('*')}",
            f"&{machine_keys.STARTUP_EVENTS_CHANNEL}",
        ]
    else:
        commands, patterns = _machine_rules(machine_id, scripts, queue_keys, [*queue_channels, *shared])
    return [*(f"+{c}" for c in commands), *patterns]


def _machine_rules(
    machine_id: str | None, scripts: ScriptsMode, queue_keys: list[str], channels: list[str]
) -> tuple[list[str], list[str]]:
    """Commands and patterns of the machine role: its queues, its own machine keys and channels."""
    if machine_id is None or not _MACHINE_ID_RE.match(machine_id):
        raise ValueError("the machine role needs --machine with the machine's id (letters, digits, _ . -)")
    commands = sorted(
        {
            *CONNECTION,
            *READS,
            *SUBSCRIBING,
            *MACHINE_WRITES,
            *_script_running(scripts),
            *script_commands(SCRIPT_NAMES),
        }
    )
    patterns = [
        *queue_keys,
        f"~{machine_keys.MACHINES_KEY}",
        f"~{machine_keys.machine_prefix(machine_id)}*",
        *channels,
        f"&{machine_keys.STARTUP_EVENTS_CHANNEL}",
        f"&{machine_keys.status_channel(machine_id)}",
    ]
    return commands, patterns


def _script_running_ro(scripts: ScriptsMode) -> list[str]:
    """The monitor connects like every client (checking the library in functions mode) but runs no script."""
    return ["function|list"] if scripts is ScriptsMode.FUNCTIONS else []


def setuser(user: str, role_rules: Sequence[str], password: str | None = None) -> list[str]:
    """The ACL SETUSER command (as arguments) that gives `user` exactly `role_rules`. Existing passwords are
    kept unless `password` is given; then only its SHA-256 goes into the command, never the password."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", user):
        raise ValueError(f"ACL user name {user!r} is invalid (letters, digits, _ . @ -; max 64)")
    # clearselectors: a role's selectors (the api role has one) replace the user's old ones, never add to them.
    args = ["ACL", "SETUSER", user, "on", "resetkeys", "resetchannels", "clearselectors", "-@all"]
    if password is not None:
        args += ["resetpass", "#" + hashlib.sha256(password.encode()).hexdigest()]
    return [*args, *role_rules]


def quote(arg: str) -> str:
    """One redis-cli argument: quoted when it holds characters redis-cli would split or interpret."""
    if re.match(r"^[A-Za-z0-9_.:@|~%&*#+{}<>=/-]+$", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
