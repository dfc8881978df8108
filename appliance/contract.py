"""What the NixOS module needs to know about the application, generated from the code that defines it.

`python -m appliance.contract > nix/contract.json`; the module reads the file with `lib.importJSON`, and
tests/test_contract.py fails when the committed file differs from this output (like docs/configuration.md). So
the connector names, credential ids, unit names, plan rules, default ports, stop margins and the settings key
tree are written down once, here and in the modules this reads, and the Nix side cannot drift from them.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr

from appliance.config import KNOWN_CONNECTORS, Settings
from appliance.config.load import ROOT, Node, _members, node_of
from appliance.identity import UNIT_PREFIX
from appliance.machine.plan import gpu_services
from appliance.secrets import CREDENTIALS, connector_credential
from appliance.units import install as inst

#: A worker needs up to ~15 s after its drain grace to stop its connector and hand jobs back: TimeoutStopSec=
#: of a worker unit is the drain grace plus this, so a drain is never cut short by SIGKILL.
WORKER_STOP_MARGIN_S = 30
#: Supervised container mode stops the workers (drain grace + WORKER_STOP_MARGIN_S), then ComfyUI (up to its
#: unit's 30 s), before the supervisor exits: its TimeoutStopSec= is the drain grace plus this.
CONTAINER_STOP_MARGIN_S = WORKER_STOP_MARGIN_S + 30 + 30


def key_tree(node: Node = ROOT) -> Any:
    """The settings schema as nested dicts: a section maps its keys to subtrees, a table of sections is
    `{"*": subtree}`, and a value is `true` (anything below it, e.g. a connector's free-form `extra`, is the
    value's own business)."""
    if node.kind == "model" and node.model is not None:
        return {name: key_tree(node_of(field.annotation)) for name, field in node.model.model_fields.items()}
    if node.kind == "dict" and node.model is not None:
        return {"*": key_tree(Node("model", node.model, node.model))}
    return True


def secret_keys(node: Node = ROOT, prefix: str = "") -> list[str]:
    """Dotted keys whose value is a secret (`*` for any entry of a table): never inline in the Nix store."""
    found: list[str] = []
    if node.kind == "model" and node.model is not None:
        for name, field in node.model.model_fields.items():
            sub = node_of(field.annotation)
            if sub.kind == "leaf" and SecretStr in _members(field.annotation):
                found.append(f"{prefix}{name}")
            else:
                found += secret_keys(sub, f"{prefix}{name}.")
    elif node.kind == "dict" and node.model is not None:
        found += secret_keys(Node("model", node.model, node.model), f"{prefix}*.")
    return found


def contract() -> dict[str, Any]:
    defaults = Settings.model_validate({"machine": {"id": "contract"}})
    comfy, worker = gpu_services([0])
    return {
        "connectors": sorted(KNOWN_CONNECTORS),
        "credentials": {
            "redis": CREDENTIALS["redis.password"],
            # A worker of connector <name> loads exactly this one (and the shared ones); a connector not listed
            # calls no keyed API (echo) and its workers get no key.
            "connectors": {
                name: cred for name in sorted(KNOWN_CONNECTORS) if (cred := connector_credential(name))
            },
            # Every id a process may look for, for `extraCredentials`.
            "all": sorted(CREDENTIALS.values()),
        },
        "secretKeys": secret_keys(),
        "units": {
            "prefix": UNIT_PREFIX,
            "target": inst.TARGET,
            "machine": inst.MACHINE_UNIT,
            "comfyuiTemplate": inst.COMFYUI_TEMPLATE,
            "workerTemplate": inst.WORKER_TEMPLATE,
            "onFailureTemplate": inst.ONFAILURE_TEMPLATE,
            "api": "appliance-api.service",
        },
        # appliance.machine.plan: GPU i runs `<comfyuiInstance><i>` and `<gpuWorker><i>`; connector c runs
        # `<apiWorker>` + c + index for each slot.
        "plan": {
            "comfyuiInstance": comfy.name.removesuffix("0"),
            "gpuWorker": worker.name.removesuffix("0"),
            "apiWorker": "worker@",
        },
        "defaults": {
            "comfyuiBasePort": defaults.comfyui.base_port,
            "comfyuiListen": defaults.comfyui.listen,
            "healthPort": defaults.health.port,
            # Whole seconds: Nix would print the float 30.0 as "30.000000".
            "drainGraceS": int(defaults.worker.drain_grace_s),
            "redisUrl": defaults.redis.url,
            "apiPort": defaults.api.port,
            "apiListen": defaults.api.host,
            "apiProcesses": defaults.api.processes,
        },
        "stopMarginsS": {"worker": WORKER_STOP_MARGIN_S, "containerMode": CONTAINER_STOP_MARGIN_S},
        "settingsKeys": key_tree(),
    }


def render() -> str:
    return json.dumps(contract(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
