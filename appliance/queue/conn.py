"""What the queue's clients share: one Redis connection, the queue's keys and settings, and its scripts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.config.queue import ChannelsMode, QueueSettings
from appliance.queue.keys import QueueKeys
from appliance.queue.scripts import ScriptSet
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

    @property
    def name(self) -> str:
        return self.keys.name

    @property
    def channel_prefix(self) -> str:
        """What the lifecycle channels' names start with: nothing (shared) or the queue's key prefix."""
        return self.keys.prefix if self.settings.channels is ChannelsMode.QUEUE else ""

    def channel(self, name: str) -> str:
        """The name of lifecycle channel `name` (`complete_job`, ...) for this queue's `queue.channels`."""
        return self.channel_prefix + name

    @property
    def wake_check(self) -> str:
        """ARGV of the scripts that wake an idle worker: '1' lets them drop registrations whose process no longer
        listens (PUBLISH reached no one); '0' on a Cluster, where PUBLISH counts only one node's subscribers."""
        return "0" if self.cluster else "1"

    def common(self) -> list[Any]:
        """ARGV[1..4] of every script that emits or publishes."""
        return [self.channel_prefix, self.keys.name, self.settings.events.value, self.settings.events_maxlen]

    def prepare(
        self,
        script: str,
        args: list[Any],
        *,
        shape: str = "",
        class_id: str = "",
        candidates: tuple[str, ...] | list[str] = (),
        customer: str = "",
    ) -> Call:
        """A call of `script` with KEYS from its spec and ARGV = common prefix (if it takes one) + `args`."""
        spec = SPECS[script]
        memo = (script, shape, class_id, customer, *candidates)
        keys = self._keys.get(memo)
        if keys is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            keys = self._keys[memo] = spec.build(
                self.keys, shape=shape, class_id=class_id, candidates=candidates, customer=customer
            )
        return script, keys, (self.common() if spec.common else []) + args

    async def run(self, call: Call) -> Any:
        return await self.scripts.call(self.client, *call)

    async def run_pipelined(self, calls: list[Call]) -> list[Any]:
        return await self.scripts.call_pipelined(self.client, calls)

    async def server_time_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000
