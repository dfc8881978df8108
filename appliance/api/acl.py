"""The Redis ACL role of the API process (`appliance redis acl --role api`): the submitter's rights on its
queues, plus what the API adds: the dead-letter replay script, its own limits scripts and idempotency keys
(under the queue's prefix), read-only access to the API keys and the fleet's machine records, and the webhook
service's rules. Never admin, never a write to the API keys (only `appliance api keys` with an operator's
user writes them)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from appliance.api.keys import keys_hash
from appliance.api.scripts import api_script
from appliance.config.queue import ChannelsMode, ScriptsMode
from appliance.queue import registry as machine_keys
from appliance.queue.acl import Role, rules, script_commands
from appliance.queue.keys import QueueKeys
from appliance.webhooks.acl import webhook_rules

#: Commands the API runs itself: tenant-index pruning and limit releases (ZREM), Idempotency-Key (SET NX GET,
#: DEL on a failed request), and the check redis-py makes before a pipeline that runs a script (SCRIPT EXISTS).
DIRECT = ("zrem", "set", "del", "script|exists")


def _own_script_commands() -> set[str]:
    found: set[str] = set()
    for name in ("rate.lua", "inflight.lua", "submit_one.lua"):
        source = api_script(name)
        found |= {c.lower() for c in re.findall(r"redis\.call\('([A-Za-z]+)'", source)}
    return found


def api_rules(
    queues: Sequence[str],
    *,
    channels: ChannelsMode = ChannelsMode.SHARED,
    scripts: ScriptsMode = ScriptsMode.EVAL,
) -> list[str]:
    """ACL rules of the API role for `queues` (after `resetkeys resetchannels -@all`, see queue.acl.setuser)."""
    parts = [*rules(Role.SUBMITTER, queues, channels=channels, scripts=scripts), *webhook_rules(queues)]
    commands = {p[1:] for p in parts if p.startswith("+")}
    commands |= {*DIRECT, *script_commands(("retry",)), *_own_script_commands()}
    patterns = [p for p in parts if not p.startswith("+")]
    patterns += [f"%R~{keys_hash(QueueKeys(q))}" for q in queues]
    patterns += [f"%R~{machine_keys.MACHINES_KEY}", "%R~machine:*"]
    return [*(f"+{c}" for c in sorted(commands)), *dict.fromkeys(patterns), _submit_selector(queues)]


def _submit_selector(queues: Sequence[str]) -> str:
    """An ACL selector for submit_one.lua, which names the API keys hash in its KEYS (to check the key in the
    submit's round trip): Redis checks a script's KEYS as written to, and every key of one command must pass
    one selector. Inside the script each call is checked again, and this selector grants no command but
    EVALSHA, so the API keys stay read-only (HGET by the root's %R)."""
    keys = [f"~{p}" for q in queues for p in (keys_hash(QueueKeys(q)), QueueKeys(q).prefix + "*")]
    return f"(+evalsha {' '.join(keys)})"
