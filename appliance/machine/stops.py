"""Counting why units stopped: `appliance machine record-stop UNIT`, run by every unit's ExecStopPost=.

systemd resets a unit's `Result=` when it restarts, so a watchdog kill followed by a quick automatic restart is
invisible to anyone polling `systemctl show`. ExecStopPost= runs after every stop with `$SERVICE_RESULT`
(success, exit-code, signal, core-dump, watchdog, timeout, ...) in its environment. It counts each one in a
small file in the units' shared StateDirectory (`$STATE_DIRECTORY/unit-stops/<unit>.json`): no network, no
credentials, nothing that could slow a stop. The supervisor reads the directory on every refresh and exports
`appliance_service_stops_total` and `appliance_service_watchdog_kills_total`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

#: Subdirectory of the StateDirectory that holds one counts file per unit.
STOPS_DIR = "unit-stops"
_UNIT_RE = re.compile(r"^[A-Za-z0-9@_.:\\-]{1,255}$")


class StopRecordError(Exception):
    pass


def state_directory(env: Mapping[str, str]) -> Path | None:
    """The unit's StateDirectory as systemd passes it (the first entry of a colon-separated list)."""
    value = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(value) if value else None


def record_stop(state_dir: Path, unit: str, result: str) -> dict[str, int]:
    """Add one stop with `result` to the unit's counts; returns the new counts."""
    if not _UNIT_RE.match(unit) or "/" in unit:
        raise StopRecordError(f"{unit!r} is not a unit name")
    directory = state_dir / STOPS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{unit}.json"
    counts = _read(path)
    counts[result] = counts.get(result, 0) + 1
    # Write-and-rename: the supervisor never reads a half-written file.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        json.dump(counts, handle)
    os.replace(tmp, path)
    return counts


def read_stops(state_dir: Path | None) -> dict[str, dict[str, int]]:
    """unit -> {result: count} for every unit that recorded a stop."""
    if state_dir is None or not (state_dir / STOPS_DIR).is_dir():
        return {}
    return {path.name.removesuffix(".json"): _read(path) for path in (state_dir / STOPS_DIR).glob("*.json")}


def _read(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}
