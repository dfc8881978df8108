"""What the queue's clients share: one Redis connection, the queue's keys and settings, and its scripts."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from appliance.config.queue import ChannelsMode, EventsMode, QueueSettings
from appliance.queue.errors import NotDurable
from appliance.queue.keys import QueueKeys
from appliance.queue.scripts import ScriptSet
from appliance.queue.scripts.evalsha import Meanwhile
from appliance.queue.specs import SPECS

#: One prepared script call: (script name, KEYS, ARGV with the common prefix).
Call = tuple[str, list[str], list[Any]]


@dataclass
class QueueConnection:
    """One queue on one Redis (standalone, or a Cluster when `cluster`); shared by the producer, the reader,
    the lease client and the housekeeper of a Queue."""

    client: Any
    keys: QueueKeys
    settings: QueueSettings
    scripts: ScriptSet
    #: A RedisCluster client: no multi-key pipelines of scripts, SCRIPT/FUNCTION LOAD per primary.
    cluster: bool = False
    #: KEYS already built, per script, shape, class and candidates: building them costs ~30 µs, a worker's calls
    #: repeat the same few (never mutated by the callers).
    _keys: dict[tuple[Any, ...], list[str]] = field(default_factory=dict, repr=False)
    #: `common()` of the settings object it was computed for (a worker's round trip asks for it several times;
    #: settings are replaced, never changed in place).
    _common: tuple[Any, list[Any]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.keys.name

    @property
    def channel_prefix(self) -> str:
        """What the lifecycle channels' names start with: nothing (shared) or the queue's key prefix. On a Cluster
        always the prefix: the shared names carry no hash tag, so they could only go out by classic PUBLISH,
        which the Cluster bus forwards to every node; per-queue names go by SPUBLISH to the queue's shard."""
        return self.keys.prefix if self.cluster or self.settings.channels is ChannelsMode.QUEUE else ""

    def channel(self, name: str) -> str:
        """The name of lifecycle channel `name` (`complete_job`, ...) for this queue's `queue.channels`."""
        return self.channel_prefix + name

    @property
    def sharded(self) -> bool:
        """Lifecycle events go out by sharded pub/sub (SPUBLISH; subscribers SSUBSCRIBE): on a Cluster client,
        whose lifecycle channels are per queue (`channel_prefix`) and carry the queue's hash tag, so they reach
        the queue's shard only instead of every node."""
        return self.cluster

    @property
    def wake_check(self) -> str:
        """ARGV of the scripts that wake an idle worker, announce a shape or ask a worker to cancel: '1' PUBLISH
        (and drop idle registrations whose process no longer listens: the message reached no one); 's' on a
        Cluster: SPUBLISH, since those channels carry the queue's hash tag (sharded pub/sub: only the queue's
        shard is told, and its count of listeners is exact; the hub SSUBSCRIBEs)."""
        return "s" if self.cluster else "1"

    def common(self) -> list[Any]:
        """ARGV[1..4] of every script that emits or publishes (the events mode says `:sharded`, see emit.lua).
        A new list each call (callers may extend it)."""
        return self._shared_common().copy()

    def _shared_common(self) -> list[Any]:
        """`common()`, computed once per settings object; the list is shared: never to be changed."""
        cached = self._common
        if cached is not None and cached[0] is self.settings:
            return cached[1]
        sharded = self.sharded and self.settings.events is not EventsMode.NONE
        mode = self.settings.events.value + (":sharded" if sharded else "")
        common = [self.channel_prefix, self.keys.name, mode, self.settings.events_maxlen]
        self._common = (self.settings, common)
        return common

    def prepare(
        self,
        script: str,
        args: list[Any],
        *,
        shape: str = "",
        class_id: str = "",
        candidates: tuple[str, ...] | list[str] = (),
        customer: str = "",
        idle: tuple[str, ...] | list[str] = (),
    ) -> Call:
        """A call of `script` with KEYS from its spec and ARGV = common prefix (if it takes one) + `args`."""
        spec = SPECS[script]
        memo = (script, shape, class_id, customer, *candidates, *(("|idle", *idle) if idle else ()))
        keys = self._keys.get(memo)
        if keys is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            keys = self._keys[memo] = spec.build(
                self.keys, shape=shape, class_id=class_id, candidates=candidates, customer=customer, idle=idle
            )
        return script, keys, (self._shared_common() + args if spec.common else args)

    def run(
        self, call: Call, *, durable: bool = False, meanwhile: Meanwhile = None
    ) -> Coroutine[Any, Any, Any]:
        """Run one call (await it); `durable` (submits, completions): with `queue.durable_replicas`, also WAIT
        for them. `meanwhile`: see ScriptSet.call. Not a coroutine itself: one coroutine less per call."""
        if durable and self.settings.durable_replicas:
            return self._run_durable(call)
        return self.scripts.call(self.client, *call, meanwhile=meanwhile)

    async def _run_durable(self, call: Call) -> Any:
        return (await self.run_pipelined([call], durable=True))[0]

    async def run_pipelined(self, calls: list[Call], *, durable: bool = False) -> list[Any]:
        """Several calls in one round trip; `durable`: with `queue.durable_replicas`, a WAIT follows them on
        the same connection (WAIT counts the replicas that hold that connection's writes), and fewer
        confirmations than asked raise NotDurable."""
        wanted, timeout_ms = self.settings.durable_replicas, self.settings.durable_timeout_ms
        if not (durable and wanted):
            return await self.scripts.call_pipelined(self.client, calls)
        *results, confirmed = await self.scripts.call_pipelined(self.client, calls, wait=(wanted, timeout_ms))
        if int(confirmed) < wanted:
            error = NotDurable(int(confirmed), wanted, timeout_ms)
            error.results = results
            raise error
        return results

    async def server_time_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000
