"""Journal priorities: `<N>` prefixes only when stderr is the stream systemd named in $JOURNAL_STREAM."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from appliance.journal import configure_logging, connected_to_journal


def _stream_id(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _run(env: dict[str, str], out: Path) -> str:
    with open(out, "w") as stderr:
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "worker", "--slot", "echo0"],
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            check=False,
            timeout=60,
        )
    assert proc.returncode == 78  # a configuration error
    return out.read_text()


def test_a_process_writing_to_the_journal_stream_prefixes_priorities(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "JOURNAL_STREAM"))}
    base["APPLIANCE_MACHINE__STATUS_INTERVAL_S"] = "-1"
    journal = tmp_path / "journal"
    journal.touch()
    text = _run({**base, "JOURNAL_STREAM": _stream_id(journal)}, journal)
    assert text.startswith("<3>appliance: error: machine.status_interval_s"), text
    # Inherited from a parent whose stderr went to the journal, but this stderr is a plain file: no prefixes.
    other = tmp_path / "other"
    other.touch()
    plain = tmp_path / "plain"
    text = _run({**base, "JOURNAL_STREAM": _stream_id(other)}, plain)
    assert text.startswith("appliance: error: machine.status_interval_s"), text
    text = _run(base, plain)
    assert text.startswith("appliance: error: machine.status_interval_s"), text


def test_log_records_carry_their_priority_on_every_line(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(path))
        assert connected_to_journal(stream)
        root = logging.getLogger()
        saved = (list(root.handlers), root.level)
        try:
            configure_logging(logging.DEBUG, stream, "%(levelname)s %(message)s")
            log = logging.getLogger("test.journal")
            log.debug("d")
            log.info("i")
            log.warning("w")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("e")
            log.critical("c")
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
    lines = path.read_text().splitlines()
    assert lines[:3] == ["<7>DEBUG d", "<6>INFO i", "<4>WARNING w"]
    traceback = lines[3:-1]
    assert traceback[0] == "<3>ERROR e" and len(traceback) > 2 and all(x.startswith("<3>") for x in traceback)
    assert lines[-1] == "<2>CRITICAL c"


def test_logging_level_comes_from_the_setting(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import argparse

    from appliance.cli import _log_level as log_level

    def _log_level(args: argparse.Namespace) -> int:
        return log_level(argparse.Namespace(handler=print, **vars(args)))[0]

    for name in [k for k in os.environ if k.startswith("APPLIANCE_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "config.toml"
    config.write_text('[logging]\nlevel = "WARNING"\n')
    assert _log_level(argparse.Namespace(log_level=None, config=str(config))) == logging.WARNING
    # Unset: INFO for services, WARNING for one-shot commands (their stderr is their one error line).
    assert _log_level(argparse.Namespace(log_level=None, config=None, long_running=True)) == logging.INFO
    assert _log_level(argparse.Namespace(log_level=None, config=None)) == logging.WARNING
    for var in ("APPLIANCE_LOGGING__LEVEL", "APPLIANCE_LOGGING_LEVEL", "APPLIANCE_LOG_LEVEL"):
        monkeypatch.setenv(var, "ERROR")
        assert _log_level(argparse.Namespace(log_level=None, config=str(config))) == logging.ERROR, var
        monkeypatch.delenv(var)
    assert _log_level(argparse.Namespace(log_level="debug", config=str(config))) == logging.DEBUG
