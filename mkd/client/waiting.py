"""`mkd wait JOB...` (and `mkd submit --wait`): block until each job ends.

Exit 0 only if every job succeeded. On a terminal one bar per job, redrawn in place (samples
against the stage's max_samples, where it has one); elsewhere one line per job as it ends.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from mkd.client.daemon_lock import lock_holder
from mkd.client.status_view import _progress, paint, use_colour
from mkd.layout import Layout
from mkd.store import JobRecord, Store

EXIT_FAILED = 1
EXIT_NOT_FOUND = 3
EXIT_TIMEOUT = 5
BAR = 24


def bar(done: float | None, width: int = BAR) -> str:
    if done is None:
        return "[" + " " * width + "]"
    filled = round(max(0.0, min(1.0, done)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done * 100:3.0f}%"


def _line(store: Store, job: JobRecord) -> str:
    attempts = store.attempts(job.job_id)
    last = attempts[-1] if attempts else None
    progress = last.progress if last else {}
    total = job.plan.max_samples if job.plan is not None else None
    done = None
    if job.state.finished:
        done = 1.0 if job.state == "succeeded" else None
    elif total and progress.get("samples") is not None:
        done = float(progress["samples"]) / float(total)
    stage = f"{last.stage_label} #{last.number}" if last else "-"
    return f"{job.job_id:<24} {job.state.value:<10} {stage:<14} {bar(done)} {_progress(progress)}"


def wait_jobs(
    layout: Layout, names: list[str], *, timeout: float | None = None, interval: float = 0.5, out: IO[str] | None = None
) -> int:
    stream = out or sys.stdout
    if not layout.db.exists():
        print(f"mkd: no job {names[0]!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    tty = stream.isatty()
    colour = use_colour(stream)
    deadline = None if timeout is None else time.monotonic() + timeout
    store = Store.open(layout.db, readonly=True)
    try:
        ids = _job_ids(store, names)
        if ids is None:
            return EXIT_NOT_FOUND
        reported: set[str] = set()
        held: set[str] = set()
        drawn = 0
        warned = False
        while True:
            jobs = [job for job in (store.get_job(i) for i in ids) if job is not None]
            if tty:
                drawn = _draw(stream, store, jobs, drawn, colour)
            _report(stream, jobs, reported, held, tty)
            if len(reported) == len(ids):
                break
            if not warned and lock_holder(layout) is None:
                warned = True
                print("mkd: no daemon is running (nothing holds the lock); waiting for one to start", file=sys.stderr)
            if deadline is not None and time.monotonic() > deadline:
                left = ", ".join(i for i in ids if i not in reported)
                print(f"mkd: still not finished after {timeout:g} s: {left}", file=sys.stderr)
                return EXIT_TIMEOUT
            time.sleep(interval)
        finals = [store.get_job(i) for i in ids]
    finally:
        store.close()
    failed = [j for j in finals if j is None or j.state != "succeeded"]
    if tty:
        for job in failed:
            if job is not None:
                stream.write(f"{job.job_id}: {job.state.value} ({job.reason})\n")
    return EXIT_FAILED if failed else 0


def _job_ids(store: Store, names: list[str]) -> list[str] | None:
    """The ids of the named jobs; None (said on stderr) when one is not a job."""
    ids = []
    for name in names:
        job = store.find_job(name)
        if job is None:
            print(f"mkd: no job {name!r}", file=sys.stderr)
            return None
        ids.append(job.job_id)
    return ids


def _draw(stream: IO[str], store: Store, jobs: list[JobRecord], drawn: int, colour: bool) -> int:
    """One bar per job, redrawn in place over the `drawn` lines of the last time; how many it drew."""
    if drawn:
        stream.write(f"\x1b[{drawn}F")  # back to the first bar
    for job in jobs:
        stream.write("\x1b[2K" + paint(_line(store, job), _colour(job), colour) + "\n")
    stream.flush()
    return len(jobs)


def _report(stream: IO[str], jobs: list[JobRecord], reported: set[str], held: set[str], tty: bool) -> None:
    """Say once that a job is held (it will not end by itself) and once that it ended."""
    for job in jobs:
        if job.state == "held" and job.job_id not in held:
            held.add(job.job_id)
            print(f"mkd: {job.job_id} is held ({job.reason}); `mkd resume {job.job_id}`", file=sys.stderr)
        if job.state.finished and job.job_id not in reported:
            reported.add(job.job_id)
            if not tty:
                stream.write(f"{job.job_id}: {job.state.value} ({job.reason})\n")
                stream.flush()


def _colour(job: JobRecord) -> str | None:
    from mkd.client.status_view import STATE_COLOURS

    return STATE_COLOURS.get(job.state.value)
