"""The queue's Lua scripts: one file per state transition.

Two ways to run them (`queue.scripts`, docs/security.md):

- `eval` (the default): EVALSHA of each script's SHA1, with SCRIPT LOAD when the server does not know it
  (a restart, a failover, a SCRIPT FLUSH). Scripts are content-addressed, so no other Redis user can change
  what a client runs: safe where tenants share a Redis.
- `functions`: FCALL of a Redis 7 Function library (persisted and replicated) that the deployer loaded with
  `appliance redis setup`. Clients never load or replace it: at connect they compare the server's copy with their
  own code and refuse a library that differs (someone replaced it); when it is missing they use EVALSHA.
  A library can be replaced by any user allowed FUNCTION LOAD, so this mode is safe only where no untrusted
  user has that right.

The library name carries a hash of the sources, so two versions can serve one Redis during a rolling update.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import weakref
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import ClusterError, NoScriptError, ResponseError, TryAgainError

from appliance.queue.errors import QueueError
from appliance.queue.scripts.evalsha import Meanwhile, evalsha

log = logging.getLogger(__name__)

#: How long a call on a Cluster keeps retrying while its queue's slot migrates between nodes (s).
MIGRATION_WAIT_S = 30.0


def is_migrating(exc: BaseException) -> bool:
    """A Cluster refused a call because its slot is moving (TRYAGAIN), or redis-py ran out of redirections
    while it moved ("TTL exhausted"): the call did not run, and will once the move ends."""
    return isinstance(exc, TryAgainError) or "TTL exhausted" in str(exc)


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
    "schedule_save",
    "schedule_due",
    "schedule_advance",
    "unhold",
    "unlimit",
    "limits_count",
    "idle",
    "wake",
    "retry",
    "finish_claim",
    "finish_claim_quiet",
)
_INCLUDE_RE = re.compile(r"^-- @include (\w+)\s*$", re.MULTILINE)
#: A script run inside another (finish_claim: complete then claim): `-- @transition name` becomes the function
#: `name_(KEYS, ARGV)` holding that script's source unchanged; `-- @keys name` builds its KEYS table `name_keys`
#: from the outer script's KEYS, matching the two headers' key names.
_TRANSITION_RE = re.compile(r"^-- @transition (\w+)\s*$", re.MULTILINE)
_KEYS_RE = re.compile(r"^-- @keys (\w+)\s*$", re.MULTILINE)
#: `-- @shared` in a script run as a transition: `shared` is the outer script's table, the function's third
#: argument (what one call reads or writes once for both: clock, state writes); run alone, it is nil.
_SHARED_RE = re.compile(r"^-- @shared\s*$", re.MULTILINE)


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


def compose(name: str, source: str) -> str:
    """Expand `-- @transition` and `-- @keys` (see _TRANSITION_RE) in script `name`'s source."""

    def transition(match: re.Match[str]) -> str:
        inner = match.group(1)
        body = _SHARED_RE.sub("-- (shared: the third argument)", expand(_read(f"{inner}.lua")))
        return f"local function {inner}_(KEYS, ARGV, shared)\n{body}\nend"

    def keys(match: re.Match[str]) -> str:
        inner = match.group(1)
        outer, outer_tail = header_keys(name)
        wanted, tail = header_keys(inner)
        missing = [key for key in wanted if key not in outer]
        if missing or (tail and not outer_tail):
            raise ValueError(f"{name}.lua's header lacks {inner}.lua's keys {missing or ['(tail)']}")
        picked = ", ".join(f"KEYS[{outer.index(key) + 1}]" for key in wanted)
        lua = f"local {inner}_keys = {{{picked}}}"
        if tail:
            lua += f"\nfor i = {len(outer) + 1}, #KEYS do {inner}_keys[#{inner}_keys + 1] = KEYS[i] end"
        return lua

    return _KEYS_RE.sub(keys, _TRANSITION_RE.sub(transition, source))


def load_source(name: str) -> str:
    """Script `name` as Redis runs it: its includes and transitions expanded."""
    return _SHARED_RE.sub("local shared = nil", expand(compose(name, _read(f"{name}.lua"))))


def load_sources() -> dict[str, str]:
    return {name: load_source(name) for name in SCRIPT_NAMES}


class Sources(Mapping[str, str]):
    """The queue's scripts, each read and expanded on first use: expanding all of them (130 file reads) was
    about 7 % of a one-shot `appliance job get`, which calls none (docs/performance.md, "CLI start-up")."""

    def __init__(self) -> None:
        self._loaded: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        source = self._loaded.get(name)
        if source is None:
            if name not in SCRIPT_NAMES:
                raise KeyError(name)
            source = self._loaded[name] = load_source(name)
        return source

    def __iter__(self) -> Iterator[str]:
        return iter(SCRIPT_NAMES)

    def __len__(self) -> int:
        return len(SCRIPT_NAMES)


class _Shas(dict[str, str]):
    """Script name -> SHA1 of its source, computed on the first call of that script (a plain dict lookup after)."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        super().__init__()
        self._sources = sources

    def __missing__(self, name: str) -> str:
        # Redis names a script by the SHA1 of its source (a name, not a security measure).
        sha = self[name] = hashlib.sha1(self._sources[name].encode(), usedforsecurity=False).hexdigest()
        return sha


def declared_keys(name: str) -> int | None:
    """How many KEYS a script's header declares (None when it takes a variable tail, like claim's shapes)."""
    header = _read(f"{name}.lua").split("]]", 1)[0]
    if re.search(r"KEYS\[\d+\.\.\d+\+", header):
        return None
    numbers = [int(n) for n in re.findall(r"KEYS\[(?:\d+\.\.)?(\d+)\]", header)]
    return max(numbers) if numbers else 0


def header_keys(name: str) -> tuple[list[str], bool]:
    """The key names a script's header lists (`KEYS[n]  name`), in order, and whether a variable tail
    (`KEYS[a..b+C]`) follows them."""
    header = _read(f"{name}.lua").split("]]", 1)[0]
    named = sorted((int(n), key) for n, key in re.findall(r"KEYS\[(\d+)\]\s+(\w+)", header))
    return [key for _, key in named], bool(re.search(r"KEYS\[\d+\.\.\d+\+", header))


def return_codes(name: str) -> set[int]:
    """The integer codes a script's `Returns:` header lists."""
    header = _read(f"{name}.lua").split("]]", 1)[0]
    returns = header.split("Returns:", 1)[1] if "Returns:" in header else ""
    returns = returns.split("Emits:", 1)[0]
    return {int(n) for n in re.findall(r"(?m)(?:^|\s)(-?\d)\s{2}", returns)}


def is_missing_function(exc: Exception) -> bool:
    """A restarted Redis without persistence, a FUNCTION FLUSH, or a fresh failover target."""
    return "function not found" in str(exc).lower()


def is_missing_script(exc: Exception) -> bool:
    """EVALSHA of a script the server does not hold (restart, failover, SCRIPT FLUSH)."""
    return str(exc).startswith("NOSCRIPT") or isinstance(exc, NoScriptError)


class ScriptLibraryError(QueueError):
    """The server's Function library is not this version's code, or cannot be checked or loaded."""


@dataclass
class ScriptSet:
    """Calls the queue scripts on one client: EVALSHA by default, FCALL of a verified library when asked."""

    #: Read on first use (`Sources`): a client that calls two scripts reads two.
    sources: Mapping[str, str] = field(default_factory=Sources)
    use_functions: bool = False
    #: Calls go to a RedisCluster client: SCRIPT/FUNCTION LOAD on the primaries, not on one server.
    cluster: bool = False
    _shas: dict[str, str] = field(init=False, repr=False, compare=False)
    #: Per connection pool, one connection kept out of it between calls (see evalsha.py).
    _spares: weakref.WeakKeyDictionary[Any, Any] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False, compare=False
    )
    #: EVALSHA heads (sha and KEYS) packed once per KEYS list (connections.py, pack_evalsha).
    _heads: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._shas = _Shas(self.sources)

    @functools.cached_property
    def version(self) -> str:
        """A hash of every script's source: names this version's Function library (reads them all)."""
        return hashlib.sha256("\0".join(self.sources[n] for n in SCRIPT_NAMES).encode()).hexdigest()[:12]

    @property
    def library(self) -> str:
        return f"appliance_{self.version}"

    def function_name(self, name: str) -> str:
        return f"{self.library}_{name}"

    def sha(self, name: str) -> str:
        return self._shas[name]

    def library_code(self) -> str:
        parts = [f"#!lua name={self.library}"]
        for name in SCRIPT_NAMES:
            parts.append(f"local function {name}_(KEYS, ARGV)\n{self.sources[name]}\nend")
            parts.append(f"redis.register_function('{self.function_name(name)}', {name}_)")
        return "\n".join(parts)

    # --- the deployer's side -----------------------------------------------------------------------------------

    async def server_library(self, client: Any) -> str | None:
        """The code of this version's library as the server holds it, or None when it is not loaded (on a
        cluster client: the first primary that lacks it or differs, else the common code)."""
        found: str | None = None
        for node in _primaries(client, self.cluster):
            reply = await _on(client, node, "FUNCTION", "LIST", "LIBRARYNAME", self.library, "WITHCODE")
            code = _library_code(reply, self.library)
            if code is None or code != self.library_code():
                return code
            found = code
        return found

    async def install(self, client: Any, *, replace: bool = False) -> str:
        """Load the library where it is missing: 'loaded', or 'present' when the same code is there already.
        A library of this name with other code is refused unless `replace` ('replaced'). Also SCRIPT LOADs every
        script, so EVALSHA clients find them. Only the deployer runs this (`appliance redis setup`)."""
        outcome = "present"
        code = self.library_code()
        for node in _primaries(client, self.cluster):
            reply = await _on(client, node, "FUNCTION", "LIST", "LIBRARYNAME", self.library, "WITHCODE")
            current = _library_code(reply, self.library)
            if current is None:
                await _on(client, node, "FUNCTION", "LOAD", code)
                outcome = "loaded" if outcome == "present" else outcome
            elif current != code:
                if not replace:
                    raise ScriptLibraryError(
                        f"the server holds a library {self.library} whose code differs from this version's "
                        "(replaced by someone else?); check who may run FUNCTION LOAD, then rerun with --replace"
                    )
                await _on(client, node, "FUNCTION", "LOAD", "REPLACE", code)
                outcome = "replaced"
            for source in self.sources.values():
                await _on(client, node, "SCRIPT", "LOAD", source)
        return outcome

    # --- the clients' side -------------------------------------------------------------------------------------

    async def load(self, client: Any) -> None:
        """Get ready to call on `client`. EVALSHA needs nothing (scripts load on first use). FCALL checks the
        server's library against this version's code: a different one raises ScriptLibraryError, a missing one
        (or a server without Functions) falls back to EVALSHA."""
        if not self.use_functions:
            return
        try:
            code = await self.server_library(client)
        except ResponseError as exc:
            if "noperm" in str(exc).lower():
                raise ScriptLibraryError(
                    f"queue.scripts=functions needs FUNCTION LIST to check the library {self.library}: {exc}"
                ) from None
            log.info("Redis Functions unavailable (%s); using EVALSHA", exc)
            self.use_functions = False
            return
        if code is None:
            log.warning(
                "Redis Function library %s is not loaded (run `appliance redis setup`); using EVALSHA",
                self.library,
            )
            self.use_functions = False
        elif code != self.library_code():
            raise ScriptLibraryError(
                f"the server's Function library {self.library} differs from this version's code: refusing to "
                "run it (replaced by someone else?); reload it with `appliance redis setup --replace` as the "
                "deployer, or set queue.scripts=eval"
            )

    def _lost_library(self) -> None:
        log.warning(
            "Redis Function library %s vanished (restart or FUNCTION FLUSH?); using EVALSHA", self.library
        )
        self.use_functions = False

    def call(
        self, client: Any, name: str, keys: list[str], args: list[Any], *, meanwhile: Meanwhile = None
    ) -> Coroutine[Any, Any, Any]:
        """The call of script `name`, to await (not a coroutine itself: one coroutine less per call)."""
        if self.cluster:
            return self._call_cluster(client, name, keys, args)
        return self._call(client, name, keys, args, meanwhile)

    async def _call_cluster(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        # While a queue's slot migrates, a script whose keys span both nodes gets TRYAGAIN (it did not run);
        # redis-py gives up within a second ("TTL exhausted"): keep retrying, with backoff, MIGRATION_WAIT_S.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MIGRATION_WAIT_S
        delay = 0.05
        while True:
            try:
                return await self._call(client, name, keys, args)
            except (TryAgainError, ClusterError) as exc:
                if not is_migrating(exc) or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _call(
        self, client: Any, name: str, keys: list[str], args: list[Any], meanwhile: Meanwhile = None
    ) -> Any:
        if self.use_functions:
            try:
                return await client.fcall(self.function_name(name), len(keys), *keys, *args)
            except ResponseError as exc:
                # The library is never loaded from here (that would let a client replace it): EVALSHA instead.
                if not is_missing_function(exc):
                    raise
                self._lost_library()
        try:
            return await evalsha(client, self.sha(name), keys, args, self._spares, meanwhile, self._heads)
        except ResponseError as exc:
            if not is_missing_script(exc):
                raise
            await self._script_load(client, name, keys)
            return await evalsha(client, self.sha(name), keys, args, self._spares, meanwhile, self._heads)

    async def _script_load(self, client: Any, name: str, keys: list[str]) -> None:
        if self.cluster:
            # Every primary, not only the keys' owner: during a reshard an ASK sends the call to the importing
            # node, and after a failover or a moved slot another primary serves the keys.
            for node in _primaries(client, True):
                await client.execute_command("SCRIPT LOAD", self.sources[name], target_nodes=node)
        else:
            await client.execute_command("SCRIPT LOAD", self.sources[name])

    async def call_pipelined(
        self,
        client: Any,
        calls: list[tuple[str, list[str], list[Any]]],
        *,
        wait: tuple[int, int] | None = None,
    ) -> list[Any]:
        """Several calls in one round trip (not on a cluster client). A call that found its script or library
        missing did not run: those, and only those, run again once (EVALSHA, after SCRIPT LOAD).

        `wait` = (replicas, timeout ms): a WAIT follows the calls in each round trip (so on the connection that
        wrote them); the fewest replicas it reported is appended to the results."""
        results = await self._pipeline(client, calls, wait)
        confirmed = results.pop() if wait else None
        missing = [
            i
            for i, r in enumerate(results)
            if isinstance(r, ResponseError) and (is_missing_function(r) or is_missing_script(r))
        ]
        if missing:
            if self.use_functions:
                self._lost_library()
            for name in dict.fromkeys(calls[i][0] for i in missing):
                await self._script_load(client, name, [])
            again = await self._pipeline(client, [calls[i] for i in missing], wait)
            if wait:
                confirmed = _fewest(confirmed, again.pop())
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in [*results, confirmed]:
            if isinstance(result, Exception):
                raise result
        return [*results, confirmed] if wait else results

    async def _pipeline(
        self, client: Any, calls: list[tuple[str, list[str], list[Any]]], wait: tuple[int, int] | None = None
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            if self.use_functions:
                pipe.fcall(self.function_name(name), len(keys), *keys, *args)
            else:
                pipe.evalsha(self.sha(name), len(keys), *keys, *args)
        if wait:
            pipe.execute_command("WAIT", *wait)
        return list(await pipe.execute(raise_on_error=False))


def _fewest(a: Any, b: Any) -> Any:
    errors = [x for x in (a, b) if isinstance(x, Exception)]
    return errors[0] if errors else min(int(a), int(b))


def _primaries(client: Any, cluster: bool) -> list[Any]:
    """Where a library must live: every primary of a cluster client, else the one server (None)."""
    if cluster:
        return list(client.get_primaries())
    return [None]


async def _on(client: Any, node: Any, *command: Any) -> Any:
    if node is None:
        return await client.execute_command(*command)
    return await client.execute_command(*command, target_nodes=node)


def _library_code(reply: Any, library: str) -> str | None:
    """The `library_code` of `library` in a FUNCTION LIST ... WITHCODE reply (RESP2 lists or RESP3 maps)."""
    for entry in reply or ():
        fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=False))
        fields = {_text(k): v for k, v in fields.items()}
        if _text(fields.get("library_name")) == library:
            code = fields.get("library_code")
            return None if code is None else _text(code)
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
