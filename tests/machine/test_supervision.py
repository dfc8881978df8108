"""Supervision modes are one enum (issue 13): decide_supervision returns its members, which are stored and
shown as their plain values, so records written by earlier versions still compare equal."""

from __future__ import annotations

import json

import pytest

from appliance.config import Settings
from appliance.machine.state import Supervision
from appliance.machine.supervisor import decide_supervision


def test_decide_supervision_returns_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)  # a shell, not a unit systemd started
    plain = Settings()
    container = Settings.model_validate({"machine": {"container_mode": True}})
    assert decide_supervision(plain, force_unmanaged=True) is Supervision.UNMANAGED
    assert decide_supervision(container) is Supervision.SUPERVISOR
    assert decide_supervision(plain) is Supervision.UNMANAGED


def test_members_read_and_write_as_their_values() -> None:
    assert [m.value for m in Supervision] == ["systemd", "supervisor", "unmanaged"]
    assert Supervision("systemd") == "systemd" and f"{Supervision.SUPERVISOR}" == "supervisor"
    assert json.dumps({"supervision": Supervision.UNMANAGED}) == '{"supervision": "unmanaged"}'
    with pytest.raises(ValueError):
        Supervision("pm2")
