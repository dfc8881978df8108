"""nix/contract.json, what the NixOS module reads about the application, is generated from the code (see
appliance.contract) and committed; these fail when it drifts from the code or says something the code does not."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.config import KNOWN_CONNECTORS, Settings
from appliance.contract import contract, render
from appliance.machine.plan import compute_plan
from appliance.secrets import CREDENTIALS

REPO = Path(__file__).resolve().parent.parent
CONTRACT = REPO / "nix" / "contract.json"


def test_committed_contract_is_current() -> None:
    assert CONTRACT.read_text() == render(), "regenerate: python -m appliance.contract > nix/contract.json"


def test_plan_rules_name_the_plans_units() -> None:
    """The module builds unit names from the rules; they must be exactly what compute_plan returns."""
    c = contract()
    rules, prefix = c["plan"], c["units"]["prefix"]
    plan = compute_plan("m", "gpu", gpu_count=0, gpus=[0, 2])
    assert plan.units == [
        f"{prefix}{name}.service"
        for i in (0, 2)
        for name in (f"{rules['comfyuiInstance']}{i}", f"{rules['gpuWorker']}{i}")
    ]
    from appliance.machine.plan import ConnectorSlots

    api = compute_plan("m", "api", gpu_count=0, connectors=[ConnectorSlots("openai", 2)])
    assert api.units == [f"{prefix}{rules['apiWorker']}openai{i}.service" for i in (0, 1)]


def test_credentials_and_keys_are_the_applications() -> None:
    c = contract()
    assert c["connectors"] == sorted(KNOWN_CONNECTORS)
    assert set(c["credentials"]["all"]) == set(CREDENTIALS.values())
    assert c["credentials"]["connectors"]["openai"] == CREDENTIALS["connectors.openai.api_key"]
    # A settings document using every key of the tree validates (the tree names no key the schema lacks).
    tree = c["settingsKeys"]
    assert set(tree) == set(Settings.model_fields)
    assert set(tree["connectors"]["*"]) == set(Settings().connectors["openai"].__class__.model_fields)
    assert "redis.password" in c["secretKeys"] and "connectors.*.api_key" in c["secretKeys"]


def test_defaults_are_the_schemas() -> None:
    d = contract()["defaults"]
    s = Settings()
    assert (d["comfyuiBasePort"], d["healthPort"], d["drainGraceS"]) == (
        s.comfyui.base_port,
        s.health.port,
        s.worker.drain_grace_s,
    )
    assert json.loads(CONTRACT.read_text())["defaults"] == d
