"""The daemon's side of jobs/control/: a table from control-file name to handler.

Each tick the daemon reads every control file once, obeys it through the runner's and the
store's public methods, records the answer in the job's timeline (or the daemon's, for
daemon verbs) with the request's id, and removes the file. A file that cannot be obeyed
(unknown name, bad body, no such job, written before this daemon started) is reported the
same way and removed: never obeyed silently, never left to act on a later daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from mkd.config import Layout
from mkd.control_requests import Request, RequestError, parse_request
from mkd.live import LiveAttempt
from mkd.memory import Plan
from mkd.stages import plan_stage
from mkd.states import REOPENABLE, JobState
from mkd.store import JobRecord, Store, StoreError

log = logging.getLogger("mkd.control")
MAX_BODY_BYTES = 64 * 1024
SETTLE_SECONDS = 0.25  # a file written in place is read once it has not changed for this long
# what a retry keeps of the finished job's stage data (what later stages use), as a stage advance does

Handler = Callable[[Request, float, str], str]
# A shutdown left by `mkd shutdown` with no daemon running would stop the next daemon the moment it
# starts: reported and removed. Job verbs dropped just before a restart still hold and are obeyed.
STALE_NOT_OBEYED = frozenset({"shutdown", "shutdown-stop-runs"})


class Refused(Exception):
    """The request is understood but cannot be done now; the message says why."""


class ControlFiles:
    """Obeys jobs/control/. `runner` is the daemon's AttemptRunner; `on_shutdown(stop_runs)` asks it to exit."""

    def __init__(
        self,
        layout: Layout,
        store: Store,
        runner: Any,
        *,
        on_shutdown: Callable[[bool], None],
        wall: Callable[[], float] = time.time,
        started_at: float | None = None,
    ) -> None:
        self.layout = layout
        self.store = store
        self.runner = runner
        self.on_shutdown = on_shutdown
        self.wall = wall
        # a file's mtime is real time, whatever clock the daemon is given
        self.started_at = time.time() if started_at is None else started_at
        self._settling = False
        self.handlers: dict[str, Handler] = {
            "cancel": self._cancel,
            "pause": self._pause,
            "resume": self._resume,
            "retry": self._retry,
            "priority": self._priority,
            "clean": self._clean,
            "shutdown": self._shutdown,
            "shutdown-stop-runs": self._shutdown,
        }

    def scan(self, now: float) -> None:
        try:
            entries = sorted(os.scandir(self.layout.control), key=lambda e: e.name)
        except FileNotFoundError:
            return
        wall = time.time()
        self._settling = False
        for entry in entries:
            if entry.name.startswith("."):
                continue  # a write in progress (atomic_write's temp file)
            if _written_within(entry, wall, SETTLE_SECONDS):
                self._settling = True  # perhaps still being written in place (`echo ... > JOB.priority`)
                continue
            try:
                self._one(Path(entry.path), now)
            except StoreError:
                raise
            except Exception as error:  # one bad control file must not stop the loop
                log.exception("control file %s", entry.name)
                self._answer(None, entry.name, None, False, f"mkd could not obey it: {type(error).__name__}: {error}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def seconds_until_due(self) -> float | None:
        """How soon to look again: a file left to settle is read at the next look, not the next tick."""
        return SETTLE_SECONDS if self._settling else None

    # --- one file ---------------------------------------------------------------------------

    def _one(self, path: Path, now: float) -> None:
        name = path.name
        try:
            text, mtime = _read_body(path)
            request = parse_request(name, text)
        except RequestError as error:
            self._answer(None, name, None, False, str(error))
            return
        job = self.store.find_job(request.job) if request.job else None
        job_id = job.job_id if job else None
        source = f"control file {name}"
        if mtime < self.started_at:
            written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))
            if request.verb in STALE_NOT_OBEYED:
                self._answer(
                    job_id,
                    name,
                    request.request_id,
                    False,
                    f"not obeyed: written at {written}, before this daemon started (no daemon was running to "
                    "take it); ask again if it still holds",
                )
                return
            # a cancel or a pause asked just before a restart still holds: obeyed, and said so
            source = f"{source} (written at {written}, before this daemon started)"
        try:
            message = self.handlers[request.verb](request, now, source)
        except Refused as why:
            self._answer(job_id, name, request.request_id, False, str(why))
            return
        fresh = self.store.find_job(request.job) if request.job else None
        self._answer(fresh.job_id if fresh else job_id, name, request.request_id, True, message)

    def _answer(self, job_id: str | None, name: str, request_id: str | None, ok: bool, message: str) -> None:
        """The answer, in the timeline (the job's, else the daemon's) and the daemon's log."""
        data = {"file": name, "ok": ok, "request": request_id}
        self.store.add_event(job_id, self.wall(), "control", f"{name}: {message}", data)
        (log.info if ok else log.warning)("control file %s: %s", name, message)

    # --- handlers ------------------------------------------------------------------------------

    def _job(self, request: Request) -> JobRecord:
        assert request.job is not None
        job = self.store.find_job(request.job)
        if job is None:
            raise Refused(f"no job {request.job!r}")
        return job

    def _live(self, job_id: str) -> LiveAttempt | None:
        live: dict[int, LiveAttempt] = self.runner.runs.live
        return next((a for a in live.values() if a.job_id == job_id), None)

    def _cancel(self, request: Request, now: float, source: str) -> str:
        job = self._job(request)
        if job.state.finished:
            raise Refused(f"{job.job_id} already {job.state}")
        self.runner.request_cancel(job.job_id, now, source=source)
        return "cancel requested"

    def _pause(self, request: Request, now: float, source: str) -> str:
        job = self._job(request)
        if job.state.finished:
            raise Refused(f"{job.job_id} already {job.state}: nothing to pause")
        if job.state == JobState.HELD:
            return "already held"
        live = self._live(job.job_id)
        if live is not None:
            if live.stop_reason is not None:
                raise Refused(f"its attempt is already stopping ({live.stop_reason})")
            self.runner.stop(live, "paused", (f"paused by {source}",), now)
            return "stopping the running attempt; the job is held once it ends (resume goes on from model.pt)"
        self.store.set_job_state(job.job_id, JobState.HELD, f"held by {source}", self.wall())
        self.runner.runs.poke()
        return "held"

    def _resume(self, request: Request, now: float, source: str) -> str:
        job = self._job(request)
        if job.state != JobState.HELD:
            live = self._live(job.job_id)
            if live is not None and live.stop_reason == "paused":
                raise Refused("it is still stopping for its pause; resume once `mkd status` shows it held")
            raise Refused(f"{job.job_id} is {job.state}, not held")
        self.store.set_job_state(job.job_id, JobState.QUEUED, f"resumed by {source}", self.wall(), next_attempt_at=None)
        self.runner.runs.poke()
        return "queued again"

    def _priority(self, request: Request, now: float, source: str) -> str:
        job = self._job(request)
        if job.state.finished:
            raise Refused(f"{job.job_id} already {job.state}")
        value = int(request.body["priority"])
        self.store.update_job(job.job_id, self.wall(), priority=value)
        self.runner.runs.poke()
        return f"priority {job.priority} -> {value}"

    def _retry(self, request: Request, now: float, source: str) -> str:
        job = self._job(request)
        if job.state not in REOPENABLE:
            raise Refused(f"{job.job_id} is {job.state}; only a failed or cancelled job can be retried")
        clash = self.store.live_job_named(job.name)
        if clash is not None:
            raise Refused(f"{clash} by the same name is live; cancel it or wait for it first")
        spec = self.runner.runs.spec(job)
        stages = spec.effective_stages
        index = _stage_index(request.body.get("from_stage"), stages, job.stage_index)
        stage = stages[index]
        labels = [s.label(i) for i, s in enumerate(stages)]
        kept = {label: r for label, r in job.memory.results.items() if label in labels[:index]}
        memory = replace(job.memory.next_stage(), results=kept)  # the stage's counts and ladders start again
        plan, memory = plan_stage(spec, stage, memory)
        changes: dict[str, Any] = dict(request.body.get("set", {}))
        unknown = sorted(set(changes) - {f.name for f in fields(Plan)})
        if unknown:
            raise Refused(f"--set {', '.join(unknown)}: not a plan key ({', '.join(f.name for f in fields(Plan))})")
        plan = Plan.from_json({**plan.to_json(), **changes})
        last = self.store.attempts(job.job_id)
        ended = f"attempt {last[-1].number}: {last[-1].failure_class or last[-1].outcome}" if last else "no attempt"
        what = ", ".join(f"{k}={v}" for k, v in changes.items()) or "no change"
        reason = f"retry by {source} from stage {labels[index]} ({what}; {job.state}: {job.reason}; {ended})"
        self.store.reopen_job(job.job_id, reason, self.wall(), stage_index=index, memory=memory, plan=plan)
        self.runner.runs.poke()
        return f"queued again from stage {labels[index]} with {what}"

    def _clean(self, request: Request, now: float, source: str) -> str:
        cutoff = self.wall() - float(request.body["older_than_seconds"])
        states = {JobState(s) for s in request.body["states"]}
        doomed = [j for j in self.store.jobs(states) if j.finished_at is not None and j.finished_at <= cutoff]
        for job in doomed:
            shutil.rmtree(self.layout.runs_dir / job.job_id, ignore_errors=True)
            (self.layout.jobs_dir / job.state.folder / f"{job.job_id}.toml").unlink(missing_ok=True)
        removed = self.store.delete_jobs([j.job_id for j in doomed])
        names = ", ".join(j.job_id for j in doomed[:10]) + (" ..." if len(doomed) > 10 else "")
        older = request.body.get("older_than", "7d")
        kinds = "/".join(sorted(states))
        return f"removed {removed} {kinds} job(s) older than {older}" + (f": {names}" if names else "")

    def _shutdown(self, request: Request, now: float, source: str) -> str:
        stop_runs = request.verb == "shutdown-stop-runs"
        self.on_shutdown(stop_runs)
        return "stopping every run, then exiting" if stop_runs else "exiting; runs keep going"


def _written_within(entry: os.DirEntry[str], wall: float, seconds: float) -> bool:
    try:
        return wall - entry.stat(follow_symlinks=False).st_mtime < seconds
    except OSError:
        return False


def _stage_index(wanted: Any, stages: list[Any], default: int) -> int:
    if wanted is None:
        return min(default, len(stages) - 1)
    labels = [s.label(i) for i, s in enumerate(stages)]
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit()):
        number = int(wanted)
        if 1 <= number <= len(stages):
            return number - 1
    elif wanted in labels:
        return labels.index(wanted)
    raise Refused(f"no stage {wanted!r}; the job's stages are {', '.join(labels)} (or 1..{len(stages)})")


def _read_body(path: Path) -> tuple[str, float]:
    """The body of a regular control file (never blocks on a FIFO) and its mtime."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RequestError(f"{path.name} is not a regular file")
        raw = os.read(fd, MAX_BODY_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"{path.name}: the body is over {MAX_BODY_BYTES} bytes")
    return raw.decode("utf-8", "replace"), info.st_mtime
