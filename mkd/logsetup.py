"""The daemon's log lines: for a terminal or file, and for journald.

Under systemd, stderr is a stream to journald, which stamps each line with its own time and
reads a priority from an sd-daemon prefix ("<4>" = warning, sd-daemon(3)). A line with its
own timestamp and no prefix shows two times, and lands at "info", so
`journalctl -p warning -u mkd` would show nothing. systemd says the stream is journald's by
setting JOURNAL_STREAM to the "device:inode" of that stream; when it matches stderr, lines
are written as "<priority>logger: message", one prefix per line (a traceback keeps its
priority). Anywhere else: "time LEVEL logger: message", as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import IO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# sd-daemon(3) priorities: SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_NOTICE 5, SD_INFO 6, SD_DEBUG 7.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (DEBUG and below: 7)."""
    return next((p for level, p in _PRIORITIES if levelno >= level), 7)


class JournalFormatter(logging.Formatter):
    """ "<priority>logger: message", every line of it prefixed; no timestamp (journald adds its own)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def is_journal_stream(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """True when JOURNAL_STREAM names this very stream (not a stderr redirected elsewhere)."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's StringIO) or closed
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def configure(level: str, stream: IO[str], environ: Mapping[str, str] | None = None) -> logging.Handler:
    """The root logger writes to stream at level (a name: "info"), in the form that suits it."""
    handler = logging.StreamHandler(stream)
    journal = is_journal_stream(stream, os.environ if environ is None else environ)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
