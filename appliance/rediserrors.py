"""One line that says what went wrong with Redis, for a person: unreachable, refused the login, or refused a command.

redis-py raises a dozen exception types, wraps errors of pipelines and transactions in its own text ("Command # 1
(HGET key field) of pipeline caused error: (...)", which also quotes the arguments: payloads, ids), and says
"Error 111 connecting to ..." for a refused connection. `describe_redis_error` turns each into a sentence that
names the cause an operator acts on: start Redis / fix the password / grant the permission / free memory.
"""

from __future__ import annotations

import re

from redis import exceptions as rx

#: redis-py's pipeline wrapper: `Command # N (ARGS...) of pipeline caused error: (MESSAGE,)`.
_PIPELINE = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: \((?P<msg>.*?),?\)$", re.S)
#: A script's error location, `script: <sha>, on @user_script:80.`: noise to a person.
_SCRIPT_AT = re.compile(r"\s*script: [0-9a-f]{40}, on @user_script:\d+\.?$")


#: redis-py's Sentinel: `No master found for 'name' : <repr of every sentinel client> - <error>, ...`.
_NO_MASTER = re.compile(r"^(No master found for '[^']*')(?: : .*)?$", re.S)


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    no_master = _NO_MASTER.match(text)
    if no_master:  # the reprs name no secret but bury the point: which primary, and where to look
        return f"{no_master.group(1)} (no sentinel in redis.sentinels answered for redis.master_name)"
    match = _PIPELINE.match(text)
    if match:
        text = match.group("msg").strip().strip("'\"")
    text = _SCRIPT_AT.sub("", text)
    return " ".join(text.split())  # one line, whatever the server sent


def redis_error_kind(exc: BaseException) -> str:
    """`unreachable`, `credentials`, `noperm`, `oom`, `readonly`, `loading`, `moved` (a Cluster node redirected a
    client that does not speak Cluster) or `error` (any other refusal)."""
    text = str(exc)
    if isinstance(exc, rx.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return "credentials"
    if "invalid username-password pair" in text or "Authentication required" in text:
        return "credentials"
    if isinstance(exc, rx.NoPermissionError) or "NOPERM" in text or "no permissions to" in text.lower():
        return "noperm"
    if isinstance(exc, rx.OutOfMemoryError) or "OOM" in text or "used memory > 'maxmemory'" in text:
        return "oom"
    if isinstance(exc, rx.ReadOnlyError) or "READONLY" in text:
        return "readonly"
    if isinstance(exc, rx.BusyLoadingError):
        return "loading"
    if isinstance(exc, rx.MovedError | rx.AskError) or text.startswith(("MOVED ", "ASK ")):
        return "moved"
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError | ConnectionError | TimeoutError):
        return "unreachable"
    return "error"


def describe_redis_error(exc: BaseException, where: str = "", doing: str = "") -> str:
    """One line: what Redis (at `where`, a redacted URL) did, while `doing` something, and the server's words.

    >>> describe_redis_error(rx.ReadOnlyError("You can't write against a read only replica."), "redis://r:6379/0")
    'Redis at redis://r:6379/0 is a read-only replica (READONLY): connect to the primary'
    """
    at = f" at {where}" if where else ""
    during = f" while {doing}" if doing else ""
    message = _message(exc)
    kind = redis_error_kind(exc)
    if kind == "unreachable":
        return f"cannot reach Redis{at}{during}: {message or type(exc).__name__}"
    if kind == "credentials":
        return f"reached Redis{at} but it refused the credentials (wrong password or user name): {message}"
    if kind == "noperm":
        return (
            f"reached Redis{at} but it refused the command{during} (NOPERM: the Redis user lacks a permission; "
            f"see docs/security.md): {message}"
        )
    if kind == "oom":
        return f"Redis{at} is out of memory (maxmemory reached) and refuses writes{during}: {message}"
    if kind == "readonly":
        return f"Redis{at} is a read-only replica (READONLY){during}: connect to the primary"
    if kind == "moved":
        return (
            f"Redis{at} is a Redis Cluster node and redirected the command{during} (MOVED): "
            "set redis.mode = cluster"
        )
    if kind == "loading":
        return f"Redis{at} is still loading its data{during}; try again in a moment"
    return f"Redis{at} answered with an error{during}: {message}"
