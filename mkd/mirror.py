"""The folders under jobs/ that show people where each job is (queued/, running/, done/...).

They mirror the store; they are never read back as truth. Each job's file sits in the
folder of its state, named JOB_ID.toml.
"""

from __future__ import annotations

import os
from pathlib import Path

from mkd.config import Layout
from mkd.fsutil import atomic_write
from mkd.states import JobState

FOLDERS = tuple(sorted({s.folder for s in JobState}))


def place_job_file(layout: Layout, job_id: str, state: JobState, source: Path | None = None, text: str = "") -> Path:
    """Put JOB_ID.toml in the folder of `state`, moving it from wherever it was.

    `source` is a file to move there (the claimed original); otherwise the file found
    in another state folder is moved, or `text` is written.
    """
    target_dir = layout.jobs_dir / state.folder
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{job_id}.toml"
    if source is not None and source.exists():
        os.replace(source, target)
    else:
        for folder in FOLDERS:
            old = layout.jobs_dir / folder / f"{job_id}.toml"
            if folder != state.folder and old.exists():
                os.replace(old, target)
                break
        else:
            if not target.exists():
                atomic_write(target, text)
    for folder in FOLDERS:
        old = layout.jobs_dir / folder / f"{job_id}.toml"
        if folder != state.folder and old.exists():
            old.unlink(missing_ok=True)
    return target
