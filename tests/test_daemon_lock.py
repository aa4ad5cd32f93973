"""Whether a daemon holds var/mkd.lock, as the CLI asks it: from /proc/locks, else a flock probe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mkd.client import daemon_lock
from mkd.layout import Layout

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
sys.stdin.read()
"""


def layout(tmp_path: Path) -> Layout:
    return Layout.of(tmp_path, state_dir="var", jobs_dir="jobs", runs_dir="runs", mimickit_dir="mk")


def test_the_holder_is_found_and_gone_once_released(tmp_path: Path) -> None:
    where = layout(tmp_path)
    assert daemon_lock.lock_holder(where) is None  # no lock file at all
    where.state_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(where.lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert daemon_lock.lock_holder(where) == holder.pid
        assert daemon_lock._probe(where) == holder.pid  # the fallback says the same
    finally:
        holder.communicate("", timeout=10)
    assert daemon_lock.lock_holder(where) is None
    assert daemon_lock._probe(where) is None
    assert "mkd is not running" in daemon_lock.not_running_banner(where)
