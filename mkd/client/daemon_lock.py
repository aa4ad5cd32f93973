"""Is a daemon running on this layout? The one that holds var/mkd.lock (flock) is.

Read from /proc/locks first, so asking does not take the lock itself when a daemon holds it;
only when the table does not list it (no daemon, or a filesystem whose stat() numbers differ
from the lock table's) does a LOCK_SH|LOCK_NB probe of a few microseconds decide.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from mkd.layout import Layout


def lock_holder(layout: Layout) -> int | None:
    """The pid of the daemon holding the lock (0 when held but the pid is unknown), or None."""
    try:
        info = os.stat(layout.lock)
    except OSError:
        return None
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            table = handle.read()
    except OSError:
        return _probe(layout)
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 fd:01:1234567 0 EOF" (a "->" marks a waiter)
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
            continue
        parts = fields[5].split(":")
        if len(parts) != 3:
            continue
        with contextlib.suppress(ValueError):
            major, minor, inode = int(parts[0], 16), int(parts[1], 16), int(parts[2])
            if inode == info.st_ino and (major, minor) == (os.major(info.st_dev), os.minor(info.st_dev)):
                return _pid_in_file(layout) or int(fields[4])
    # Not listed: no daemon, or a filesystem whose stat() device or inode is not the one the lock
    # table shows (btrfs subvolumes, overlayfs): ask flock itself.
    return _probe(layout)


def _probe(layout: Layout) -> int | None:
    """Try a shared lock for an instant: it fails only while a daemon holds its exclusive one."""
    try:
        fd = os.open(layout.lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_in_file(layout) or 0
    finally:
        os.close(fd)
    return None


def _pid_in_file(layout: Layout) -> int:
    try:
        return int(layout.lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def store_as_of(layout: Layout) -> float | None:
    """When the store was last written (the newest of the database and its WAL)."""
    times = []
    for path in (layout.db, layout.db.with_name(layout.db.name + "-wal")):
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times) if times else None


def not_running_banner(layout: Layout) -> str:
    as_of = store_as_of(layout)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(as_of)) if as_of else "never"
    return (
        f"mkd is not running (nothing holds {layout.lock}): these rows are as of {when}, "
        "the store's last write; start it with `mkd run` (or systemctl start mkd)"
    )
