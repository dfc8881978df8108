"""The webhook outbox's Lua scripts: one file per transition of a delivery (queued, leased, delivered, retried,
given up, revived). They share the queue's includes (`-- @include now`: the server's clock) and run by EVALSHA,
loaded on first use, as the queue's do by default."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import ResponseError

from appliance.queue.scripts import expand, is_missing_script

SCRIPT_NAMES = ("enqueue", "claim", "delivered", "retry", "give_up", "revive")


def read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def load_sources() -> dict[str, str]:
    return {name: expand(read(name)) for name in SCRIPT_NAMES}


@dataclass
class OutboxScripts:
    sources: dict[str, str] = field(default_factory=load_sources)
    cluster: bool = False

    def __post_init__(self) -> None:
        # Redis names a script by the SHA1 of its source (a name, not a security measure).
        self.shas = {
            n: hashlib.sha1(s.encode(), usedforsecurity=False).hexdigest() for n, s in self.sources.items()
        }

    async def call(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.shas[name], len(keys), *keys, *args)
        except ResponseError as exc:
            if not is_missing_script(exc):
                raise
        if self.cluster:  # the node that owns the keys needs it
            node = client.get_node_from_key(keys[0])
            await client.execute_command("SCRIPT LOAD", self.sources[name], target_nodes=node)
        else:
            await client.execute_command("SCRIPT LOAD", self.sources[name])
        return await client.evalsha(self.shas[name], len(keys), *keys, *args)
