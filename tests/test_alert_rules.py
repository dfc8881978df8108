"""The shipped Prometheus alert rules: valid (`promtool check rules`), behaving as intended (`promtool test
rules` unit tests), and built only on metric names that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.config import Settings
from appliance.pools import PoolSignalsCollector

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "alerts" / "appliance.rules.yml"
RULE_TESTS = ROOT / "alerts" / "tests" / "appliance.rules.test.yml"

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_rules_are_valid() -> None:
    out = _promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 12 rules found" in out.stdout


def test_rule_unit_tests_pass() -> None:
    out = _promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    assert {
        "ApplianceMachineDown",
        "ApplianceServiceRestartLoop",
        "ApplianceQueueBacklogAge",
        "ApplianceGpuHot",
        "ApplianceJobErrorRate",
        "ApplianceWatchdogKill",
    } <= tested


def test_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule with the wrong threshold fails them."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "appliance.rules.yml").write_text(
        RULES.read_text().replace(
            "appliance_gpu_temperature_celsius > 85", "appliance_gpu_temperature_celsius > 95"
        )
    )
    (tmp_path / "tests" / "t.yml").write_text(RULE_TESTS.read_text())
    out = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "tests" / "t.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "ApplianceGpuHot" in out.stdout + out.stderr


def _exported_names() -> set[str]:
    """Names the machine exporter really renders (for a simulated GPU machine), those docs/metrics.md lists
    (job counters appear only once a job ran) and the pool collector's."""
    from prometheus_client.exposition import generate_latest

    from appliance.machine.metrics import make_registry
    from tests.monitor.helpers import gpu_machine_state

    registry, _jobs = make_registry(gpu_machine_state("m1"))
    names = set(re.findall(r"^(appliance_[a-z0-9_]+)", generate_latest(registry).decode(), re.MULTILINE))
    names |= set(re.findall(r"appliance_[a-z0-9_]+", (ROOT / "docs" / "metrics.md").read_text()))
    collector = PoolSignalsCollector(None, Settings())  # type: ignore[arg-type]
    collector.last_ok = True
    from appliance.pools.signals import PoolReport, PoolSignals

    collector.report = PoolReport("default", 900, 0, [PoolSignals("fast", True, max_machines=3)])
    collector.refreshed_at = 0.0
    for family in collector.collect():
        names.update(s.name for s in family.samples)
    return names


def test_rules_use_existing_metrics() -> None:
    exported = _exported_names()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used = set(re.findall(r"appliance_[a-z0-9_]+", rule["expr"]))
            unknown = used - exported
            assert not unknown, f"{rule['alert']} uses metrics nobody exports: {sorted(unknown)}"
