"""What the queue's clients share: one Redis connection, the queue's keys and settings, and its scripts."""

from __future__ import annotations

from dataclasses import dataclass
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
        keys = spec.build(self.keys, shape=shape, class_id=class_id, candidates=candidates, customer=customer)
        return script, keys, (self.common() if spec.common else []) + args

    async def run(self, call: Call) -> Any:
        return await self.scripts.call(self.client, *call)

    async def run_pipelined(self, calls: list[Call]) -> list[Any]:
        return await self.scripts.call_pipelined(self.client, calls)

    async def server_time_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000
