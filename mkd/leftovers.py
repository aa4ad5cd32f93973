"""Temp files a killed writer left behind, removed at the daemon's start.

mkd.fsutil.atomic_write writes `.NAME.PID.tmp` beside its target and renames it in; a
SIGKILL between the two leaves the temp file for good. Only that exact pattern is touched,
only in mkd's own folders (never MimicKit's out/), and only when PID is no live process,
so a write in progress (a `mkd submit` at this moment) is never cut. In jobs/incoming,
where people's scripts write too, a file must also be a minute old.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from mkd.config import Layout

log = logging.getLogger("mkd.leftovers")
TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")
INCOMING_MIN_AGE_SECONDS = 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(entry: os.DirEntry[str]) -> float:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def mkd_folders(layout: Layout) -> Iterator[Path]:
    """jobs/* (incoming, control, the state mirrors, rejected), var/, var/claimed, runs/JOB, runs/JOB/attempts/NN."""
    yield layout.jobs_dir
    yield from _subdirs(layout.jobs_dir)
    yield layout.state_dir
    yield layout.claimed
    for job in _subdirs(layout.runs_dir):
        yield job
        yield from _subdirs(job / "attempts")


def _subdirs(folder: Path) -> Iterator[Path]:
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    yield Path(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        return


def remove_dead_temp_files(layout: Layout) -> list[Path]:
    """Remove `.NAME.PID.tmp` files whose writer is gone; returns what was removed."""
    removed = []
    me = os.getpid()
    for folder in mkd_folders(layout):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = TMP_NAME.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            pid = int(match["pid"])
            if pid == me or _alive(pid):
                continue
            if folder == layout.incoming and _age(entry) < INCOMING_MIN_AGE_SECONDS:
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as error:
                log.warning("cannot remove the leftover temp file %s: %s", entry.path, error)
                continue
            removed.append(Path(entry.path))
    for path in removed:
        log.warning("removed %s, left by a writer killed mid-write", path)
    return removed
