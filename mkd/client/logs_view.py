"""`mkd logs`: a job's console logs, attempt by attempt; `-f` starts at the tail, like tail -f.

Which attempts: the latest (default), `--attempt K`, `--all-attempts`, or `--since 10m` (the
attempts alive in that window: MimicKit's console lines carry no clock, so the window picks
attempts, and `-n` cuts lines).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mkd.store import AttemptRecord, Store

FOLLOW_TAIL_LINES = 10  # what `-f` shows first without -n, as tail -f does
BLOCK = 64 * 1024


def tail_bytes(path: Path, lines: int) -> tuple[bytes, int]:
    """The last `lines` lines of `path` and the file's size, read backwards by blocks (a 1 GB log costs nothing)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if lines <= 0:
            return b"", size
        end = size
        data = b""
        while end > 0 and data.count(b"\n") <= lines:
            start = max(0, end - BLOCK)
            handle.seek(start)
            data = handle.read(end - start) + data
            end = start
    body = data[:-1] if data.endswith(b"\n") else data
    cut = body.split(b"\n")[-lines:]
    text = b"\n".join(cut) + (b"\n" if data.endswith(b"\n") else b"")
    return text, size


def choose(
    attempts: list[AttemptRecord], *, number: int | None, every: bool, since_seconds: float | None, now: float
) -> list[AttemptRecord]:
    if number is not None:
        return [a for a in attempts if a.number == number]
    if every:
        return attempts
    if since_seconds is not None:
        cutoff = now - since_seconds
        return [a for a in attempts if a.ended_at is None or a.ended_at >= cutoff]
    return attempts[-1:]


def console(attempt: AttemptRecord) -> Path:
    return Path(attempt.dir) / "console.log"


def metadata(store: Store, job_id: str, chosen: list[AttemptRecord]) -> dict[str, Any]:
    job = store.get_job(job_id)
    assert job is not None
    out = []
    for a in chosen:
        path = console(a)
        rotated = sorted(str(p) for p in path.parent.glob("console.log.*"))
        out.append(
            {
                "attempt": a.number,
                "stage": a.stage_label,
                "state": a.state.value,
                "outcome": a.outcome,
                "failure_class": a.failure_class,
                "started_at": a.started_at,
                "ended_at": a.ended_at,
                "console": str(path),
                "bytes": path.stat().st_size if path.exists() else None,
                "rotated": rotated,
            }
        )
    return {"job_id": job.job_id, "state": job.state.value, "attempts": out}


def show_logs(
    store: Store,
    name: str,
    *,
    follow: bool = False,
    attempt: int | None = None,
    all_attempts: bool = False,
    lines: int | None = None,
    since_seconds: float | None = None,
    as_json: bool = False,
) -> int:
    job = store.find_job(name)
    if job is None:
        print(f"mkd: no job {name!r}", file=sys.stderr)
        return 3
    attempts = store.attempts(job.job_id)
    chosen = choose(attempts, number=attempt, every=all_attempts, since_seconds=since_seconds, now=time.time())
    if as_json:
        print(json.dumps(metadata(store, job.job_id, chosen), indent=2))
        return 0
    if not attempts:
        print(f"mkd: {job.job_id} has not started an attempt yet", file=sys.stderr)
        return 3
    if not chosen:
        which = f"attempt {attempt}" if attempt is not None else "attempt in that window"
        numbers = ", ".join(str(a.number) for a in attempts)
        print(f"mkd: {job.job_id} has no {which} (attempts: {numbers})", file=sys.stderr)
        return 3
    headers = len(chosen) > 1 or all_attempts or since_seconds is not None
    out = sys.stdout.buffer
    offset = 0
    path = console(chosen[-1])
    for a in chosen:
        path = console(a)
        if headers:
            out.write(f"--- attempt {a.number} [{a.stage_label}] {a.outcome or a.state.value} ---\n".encode())
        if not path.exists():
            offset = 0
            continue
        count = lines if lines is not None else (FOLLOW_TAIL_LINES if follow and a is chosen[-1] else None)
        if count is None:
            data = path.read_bytes()
            offset = len(data)
        else:
            data, offset = tail_bytes(path, count)
        out.write(data)
    out.flush()
    if not follow:
        return 0
    return _follow(store, job.job_id, path, offset, attempt)


def _follow(store: Store, job_id: str, path: Path, offset: int, pinned: int | None) -> int:
    out = sys.stdout.buffer
    finishing = False  # the job ended: one more read for the last bytes, then stop
    while True:
        if path.exists():
            size = path.stat().st_size
            if size < offset:  # copy-truncate rotation: the file starts again
                offset = 0
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            out.write(chunk)
            out.flush()
        if finishing:
            return 0
        current = store.get_job(job_id)
        if pinned is None:
            latest = store.attempts(job_id)
            newer = console(latest[-1]) if latest else path
            if newer != path:
                path, offset = newer, 0
                out.write(f"\n--- attempt {latest[-1].number} [{latest[-1].stage_label}] ---\n".encode())
                continue
        if current is None or current.state.finished:
            finishing = True
            continue
        time.sleep(0.5)
