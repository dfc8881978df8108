"""The queue's Lua scripts: one file per state transition, loaded once per connection.

Preferred: a Redis 7 Function library (FUNCTION LOAD REPLACE + FCALL; persisted and replicated, so no NOSCRIPT
race after a failover). Fallback where Functions are missing (Redis < 7, some managed services, Dragonfly):
EVALSHA with a SCRIPT LOAD retry. The library name carries a hash of the sources, so two versions can serve
one Redis during a rolling update.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

SCRIPT_NAMES = (
    "submit",
    "claim",
    "heartbeat",
    "progress",
    "complete",
    "fail",
    "release",
    "cancel",
    "reap",
    "requeue",
)
_INCLUDE_RE = re.compile(r"^-- @include (\w+)\s*$", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def expand(source: str, seen: tuple[str, ...] = ()) -> str:
    """Replace `-- @include name` lines with scripts/includes/name.lua (each include at most once per script)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            raise ValueError(f"circular or repeated include of {name!r}")
        return expand(_read(f"includes/{name}.lua"), (*seen, name))

    return _INCLUDE_RE.sub(replace, source)


def load_sources() -> dict[str, str]:
    return {name: expand(_read(f"{name}.lua")) for name in SCRIPT_NAMES}


def declared_keys(name: str) -> int | None:
    """How many KEYS a script's header declares (None when it takes a variable tail, like claim's shapes)."""
    header = _read(f"{name}.lua").split("]]", 1)[0]
    if re.search(r"KEYS\[\d+\.\.\d+\+", header):
        return None
    numbers = [int(n) for n in re.findall(r"KEYS\[(?:\d+\.\.)?(\d+)\]", header)]
    return max(numbers) if numbers else 0


def return_codes(name: str) -> set[int]:
    """The integer codes a script's `Returns:` header lists."""
    header = _read(f"{name}.lua").split("]]", 1)[0]
    returns = header.split("Returns:", 1)[1] if "Returns:" in header else ""
    returns = returns.split("Emits:", 1)[0]
    return {int(n) for n in re.findall(r"(?m)(?:^|\s)(-?\d)\s{2}", returns)}


def is_missing_function(exc: Exception) -> bool:
    """A restarted Redis without persistence, a FUNCTION FLUSH, or a fresh failover target."""
    return "function not found" in str(exc).lower()


@dataclass
class ScriptSet:
    """Calls the queue scripts on one client, as FCALL where it can and EVALSHA where it must."""

    sources: dict[str, str] = field(default_factory=load_sources)
    use_functions: bool = True
    version: str = ""
    _scripts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        digest = hashlib.sha256("\0".join(self.sources[n] for n in SCRIPT_NAMES).encode()).hexdigest()
        self.version = digest[:12]

    @property
    def library(self) -> str:
        return f"appliance_{self.version}"

    def function_name(self, name: str) -> str:
        return f"{self.library}_{name}"

    def library_code(self) -> str:
        parts = [f"#!lua name={self.library}"]
        for name in SCRIPT_NAMES:
            parts.append(f"local function {name}_(KEYS, ARGV)\n{self.sources[name]}\nend")
            parts.append(f"redis.register_function('{self.function_name(name)}', {name}_)")
        return "\n".join(parts)

    async def load(self, client: Any) -> None:
        """Install the library on `client` (every primary, for a cluster client); fall back to scripts."""
        if self.use_functions:
            try:
                await self._function_load(client)
                return
            except ResponseError as exc:
                log.info("Redis Functions unavailable (%s); using EVALSHA", exc)
                self.use_functions = False
        self._scripts = {name: client.register_script(src) for name, src in self.sources.items()}

    async def _function_load(self, client: Any) -> None:
        code = self.library_code()
        if hasattr(client, "get_primaries"):  # RedisCluster: every primary needs the library
            from redis.asyncio.cluster import RedisCluster

            await client.execute_command(
                "FUNCTION LOAD", "REPLACE", code, target_nodes=RedisCluster.PRIMARIES
            )
        else:
            await client.execute_command("FUNCTION LOAD", "REPLACE", code)

    async def call(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self.use_functions:
            if not self._scripts:
                self._scripts = {n: client.register_script(src) for n, src in self.sources.items()}
            return await self._scripts[name](keys=keys, args=args, client=client)
        try:
            return await client.fcall(self.function_name(name), len(keys), *keys, *args)
        except ResponseError as exc:
            # A restarted Redis without persistence, a FUNCTION FLUSH, or a fresh failover target: reload once.
            if not is_missing_function(exc):
                raise
            log.warning("queue functions missing on the server (restart or flush?); reloading")
            await self._function_load(client)
            return await client.fcall(self.function_name(name), len(keys), *keys, *args)

    async def call_pipelined(self, client: Any, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Several FCALLs in one round trip (callers check `use_functions` first). A call that found the library
        missing did not run: those, and only those, run again once after a reload, as in `call`."""
        results = await self._pipeline(client, calls)
        missing = [
            i for i, r in enumerate(results) if isinstance(r, ResponseError) and is_missing_function(r)
        ]
        if missing:
            log.warning("queue functions missing on the server (restart or flush?); reloading")
            await self._function_load(client)
            for i, result in zip(
                missing, await self._pipeline(client, [calls[i] for i in missing]), strict=True
            ):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline(self, client: Any, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.fcall(self.function_name(name), len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
