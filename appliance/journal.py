"""Log lines the journal files at the right priority, and plain text everywhere else.

Under systemd, stderr is a stream to journald and every line is stored at the unit's default priority (6, info)
unless it starts with an sd-daemon prefix `<N>` (sd-daemon(3)); with it, `journalctl -p warning` and the
colours of `systemctl status` find warnings and errors. systemd sets `JOURNAL_STREAM=<device>:<inode>` for a
process whose stderr (or stdout) is connected to the journal; sd_journal_stream_fd(3) says to compare it with
the descriptor's own fstat(): a child whose stderr was redirected elsewhere inherits the variable but must not
write prefixes into a file or a terminal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import IO

#: syslog priorities (sd-daemon.h): SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7.
PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority_of(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between round towards the more severe)."""
    return next((p for level, p in sorted(PRIORITY.items()) if levelno <= level), 2)


def connected_to_journal(stream: IO[str], env: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal stream systemd named in $JOURNAL_STREAM."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # no real descriptor (a test's StringIO, a closed stream)
    return st.st_dev == int(device) and st.st_ino == int(inode)


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record with `<N>`, so a traceback's lines keep the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority_of(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def prefix_lines(text: str, levelno: int, stream: IO[str]) -> str:
    """`text` with the priority prefix on each line when `stream` goes to the journal, else unchanged."""
    if not connected_to_journal(stream):
        return text
    prefix = f"<{priority_of(levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


def configure_logging(level: int, stream: IO[str], fmt: str) -> None:
    """The root logger writes to `stream`: with priority prefixes when it is the journal, plain otherwise."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter(fmt) if connected_to_journal(stream) else logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
