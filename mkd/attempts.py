"""Watching live attempts and ending them: tail each console, stop a run that must stop (a live
signature, NaN, a stall, a timeout, a cancel), and when a run ends, judge it (mkd.verdict), ask
the lifecycle what comes next (mkd.lifecycle) and book it (mkd.book). Re-adopts runs after a
restart. Nothing here parses MimicKit's text itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from mkd import postmortem
from mkd.engine import child_info
from mkd.executors.base import RunRef, RunStatus
from mkd.exits import ExitRecord
from mkd.failures import FailureClass
from mkd.fsutil import read_tail
from mkd.gpu_ledger import GpuLedger
from mkd.lifecycle import Ended, after_attempt
from mkd.live import LiveAttempt
from mkd.livecheck import RunFacts, check
from mkd.mimickit.results import check_train_artifacts
from mkd.procs import read_stat
from mkd.runs import Runs
from mkd.spec import JobSpec, Stage
from mkd.stagekinds import TRAINING
from mkd.states import AttemptState, JobState
from mkd.store import AttemptRecord, JobRecord, StoreError
from mkd.verdict import AttemptEnd, Verdict, judge, judge_error
from mkd.workload import stage_timeout

log = logging.getLogger("mkd.attempts")
CONSOLE_TAIL_BYTES = 64 * 1024
PROGRESS_WRITE_SECONDS = 5.0  # progress into the store (mkd status); metrics read it live
STOP_ESCALATE_EXTRA_SECONDS = 5.0
PASSED_EARLY = "probe_passed"


class AttemptRunner:
    def __init__(self, runs: Runs, ledger: GpuLedger) -> None:
        self.runs = runs
        self.ledger = ledger
        self._progress_written: dict[int, float] = {}
        self._progress_due: list[LiveAttempt] = []

    def forget(self, job_ids: set[str]) -> None:
        for attempt_id in [k for k in self._progress_written if k not in self.runs.live]:
            del self._progress_written[attempt_id]

    def observe(self, now: float) -> None:
        self.runs.executor.tick()
        self._progress_due = []
        for live in list(self.runs.live.values()):
            try:
                self._observe_one(live, now)
            except StoreError:
                raise
            except Exception:  # one broken attempt must not stop the others: log, count, go on
                log.exception("job %s: error while watching attempt %d", live.job_id, live.attempt_id)
                self.runs.store.bump("internal_errors_total.observe")
        self._write_progress()

    def _observe_one(self, live: LiveAttempt, now: float) -> None:
        lines, rows = live.read_new()
        if rows:
            live.last_progress_mono = now
            self._record_progress(live, now)
        if live.stop_reason is None:
            self._check(live, lines, rows, now)
        elif live.stop_sent_mono is not None:
            grace = self._grace(live)
            if now - live.stop_sent_mono > grace + STOP_ESCALATE_EXTRA_SECONDS:
                self.runs.executor.stop(live.handle, live.dir, kill_now=True)
        status = self.runs.executor.poll(live.handle, live.dir)
        self._note_status(live, status)
        exit = status.exit
        if exit is not None:
            try:
                with self.runs.store.batch():  # the attempt's end and its decision land together, or neither
                    self._finish(live, exit, now)
            except StoreError:
                raise
            except Exception as error:  # ended for good: never judged again at the next tick
                log.exception("job %s: error while finishing attempt %d", live.job_id, live.attempt_id)
                self.runs.store.bump("internal_errors_total.judge")
                self._fail_attempt(live, exit, error)
            del self.runs.live[live.attempt_id]

    def _fail_attempt(self, live: LiveAttempt, exit: ExitRecord, error: Exception) -> None:
        """The attempt's end could not be decided: record it as mkd's error and fail the job, with the evidence."""
        verdict = judge_error(error)
        with self.runs.store.batch():
            self._record_end(live, exit, verdict)
            job = self.runs.store.get_job(live.job_id)
            if job is not None and not job.state.finished:
                self.runs.set_state(job, JobState.FAILED, verdict.evidence[0])

    def _note_status(self, live: LiveAttempt, status: RunStatus) -> None:
        """What an outside scheduler says: why the run still waits, and which GPUs it was given."""
        if status.pending_reason != live.pending_reason:
            live.pending_reason = status.pending_reason
            if status.pending_reason:
                self.runs.store.update_job(live.job_id, self.runs.wall(), reason=f"waiting: {status.pending_reason}")
            elif not status.ended:
                where = f" on {status.node}" if status.node else ""
                self.runs.store.update_job(
                    live.job_id, self.runs.wall(), reason=f"running{where} ({_where(live.handle)})"
                )
        if status.granted_gpus is not None and status.granted_gpus != live.granted_gpus:
            live.granted_gpus = status.granted_gpus
            attempt = self.runs.store.get_attempt(live.attempt_id)
            if attempt is not None:
                params = replace(attempt.params, granted_gpus=status.granted_gpus, node=status.node)
                self.runs.store.update_attempt(live.attempt_id, params=params.to_json())
            self.runs.event(live.job_id, "gpus", f"the executor gave it GPU(s) {','.join(status.granted_gpus) or '-'}")

    def _grace(self, live: LiveAttempt) -> float:
        return self.runs.spec_of(live.job_id).watch.stop_grace.total_seconds()

    def _record_progress(self, live: LiveAttempt, now: float) -> None:
        if now - self._progress_written.get(live.attempt_id, -1e9) < PROGRESS_WRITE_SECONDS:
            return
        self._progress_written[live.attempt_id] = now
        self._progress_due.append(live)

    def _write_progress(self) -> None:
        """Every run's new progress in one transaction (one fsync a tick, not one per run)."""
        due = [live for live in self._progress_due if live.attempt_id in self.runs.live]
        self._progress_due = []
        if not due:
            return
        with self.runs.store.batch():
            for live in due:
                fields: dict[str, Any] = {"progress": live.progress()}
                if live.stop_reason is None:  # stopping or ended stays so
                    fields["state"] = AttemptState.RUNNING
                self.runs.store.update_attempt(live.attempt_id, **fields)

    def _check(self, live: LiveAttempt, lines: list[str], rows: list[Any], now: float) -> None:
        """Signatures that mean "stop it now", NaN, and the clocks: stage timeout, start-up, stall."""
        watch = self.runs.spec_of(live.job_id).watch
        facts = RunFacts(
            stage_kind=live.stage_kind,
            age=now - live.started_mono,
            since_progress=None if live.last_progress_mono is None else now - live.last_progress_mono,
            timeout=live.timeout_seconds,
            startup_timeout=watch.startup_timeout.total_seconds(),
            stall_timeout=watch.stall_timeout.total_seconds(),
            probe_passed=live.stage_kind == "probe" and self._probe_passed(live),
        )
        wanted = check(facts, lines, rows)
        if wanted is not None and wanted.reason == FailureClass.STALL.value:
            # only now the root's state in /proc (stopped?): not a /proc read per run per tick
            child = child_info(live.dir)
            root = read_stat(child.pid) if child is not None else None
            if root is not None:
                wanted = check(replace(facts, root_state=root.state, root_pid=root.pid), lines, rows)
        if wanted is not None:
            self.stop(live, wanted.reason, wanted.evidence, now, kill_now=wanted.kill_now)

    def _probe_passed(self, live: LiveAttempt) -> bool:
        last = live.last
        if last is None or last.iteration < 1:
            return False
        return all(check_train_artifacts(live.dir / "out").values())

    def stop(
        self, live: LiveAttempt, reason: str, evidence: tuple[str, ...], now: float, kill_now: bool = False
    ) -> None:
        """Stop an attempt, keeping a post-mortem bundle first when it is stuck."""
        if live.stop_reason is not None:
            return
        live.stop_reason = reason
        live.stop_evidence = tuple(evidence)
        live.stop_sent_mono = now
        if reason not in ("cancelled", PASSED_EARLY, "shutdown", "paused"):
            postmortem.write_bundle(live.dir, live.console, self.runs.gpu, child_info(live.dir))
        self.runs.event(live.job_id, "stop", f"stopping attempt: {reason}", {"evidence": list(evidence)})
        self.runs.store.update_attempt(live.attempt_id, state=AttemptState.STOPPING, stop_reason=reason)
        self.runs.executor.stop(live.handle, live.dir, kill_now=kill_now)

    def _finish(self, live: LiveAttempt, exit: ExitRecord, now: float) -> None:
        live.read_new()
        job = self.runs.store.get_job(live.job_id)
        attempt = self.runs.store.get_attempt(live.attempt_id)
        assert job is not None and attempt is not None
        spec = self.runs.spec(job)
        stage = spec.effective_stages[attempt.stage_index]
        try:
            verdict = judge(self._attempt_end(live, exit, stage, attempt))
        except Exception as error:  # one attempt mkd cannot judge must end, not be judged again each tick
            log.exception("job %s: cannot judge attempt %d", live.job_id, live.attempt_id)
            self.runs.store.bump("internal_errors_total.judge")
            verdict = judge_error(error)
        failure = None if verdict.failure is None else verdict.failure.value
        evidence, permanent = verdict.evidence, verdict.permanent
        progress = live.progress()
        self._record_end(live, exit, verdict, progress=progress)
        if exit.lingering_workers:
            self.runs.event(job.job_id, "workers", f"{exit.lingering_workers} worker(s) outlived the root; killed")
        if failure and failure not in ("cancelled", "paused"):
            self.runs.event(job.job_id, "failure", f"attempt {attempt.number}: {failure}", {"evidence": list(evidence)})
        had_progress = live.last is not None or live.parser.test_result is not None
        attempt = replace(attempt, progress=progress)
        self._after(job, spec, stage, attempt, live, failure, permanent, had_progress)

    def _record_end(self, live: LiveAttempt, exit: ExitRecord, verdict: Verdict, **fields: Any) -> None:
        """The attempt's row as it ended: exit status, outcome, class and evidence."""
        self.runs.store.update_attempt(
            live.attempt_id,
            state=AttemptState.ENDED,
            ended_at=self.runs.wall(),
            returncode=exit.returncode,
            signal=exit.signal,
            outcome=verdict.outcome,
            failure_class=None if verdict.failure is None else verdict.failure.value,
            evidence=list(verdict.evidence),
            **fields,
        )

    def _attempt_end(self, live: LiveAttempt, exit: ExitRecord, stage: Stage, attempt: AttemptRecord) -> AttemptEnd:
        """Read what the verdict looks at; a lost run's leftovers are killed first."""
        lost = exit.lost
        return AttemptEnd(
            exit=exit,
            stage_kind=stage.kind,
            console_tail=read_tail(live.console, CONSOLE_TAIL_BYTES),
            checks=tuple(stage.checks),
            artifacts=check_train_artifacts(live.dir / "out") if stage.kind in TRAINING else None,
            multi_device=attempt.params.processes > 1,
            had_progress=live.last is not None,
            test_result_seen=live.parser.test_result is not None,
            stop_reason=live.stop_reason,
            stop_evidence=live.stop_evidence,
            leftovers_killed=self.runs.executor.kill_leftovers(live.handle, live.dir) if lost else 0,
            disk_full=lost and _disk_full(live.dir),
        )

    def _after(
        self,
        job: JobRecord,
        spec: JobSpec,
        stage: Stage,
        attempt: AttemptRecord,
        live: LiveAttempt,
        failure: str | None,
        permanent: bool,
        had_progress: bool,
    ) -> None:
        """Ask the lifecycle what comes next, and book it."""
        job = self.runs.store.get_job(job.job_id) or job
        model = Path(attempt.dir) / "out" / "model.pt"
        ended = Ended(
            number=attempt.number,
            plan=attempt.params,
            progress=attempt.progress,
            started_at=attempt.started_at,
            ended_at=self.runs.wall(),
            had_progress=had_progress,
            model_file=str(model) if model.exists() else None,
            gpu_pids=tuple(sorted(live.gpu_pids)),
            foreign_memory=self.ledger.foreign_memory(live),
            samples_per_second=live.median_samples_per_second(),
            utilization_pct=live.mean_utilization(),
        )
        verdict = Verdict(None if failure is None else FailureClass(failure), (), permanent)
        step = after_attempt(self.runs.lifecycle_job(job, spec), ended, verdict, self.runs.rng)
        self.runs.book.apply(job.job_id, step, stage_label=stage.label(job.stage_index))
        self.runs.poke()

    def request_cancel(self, name: str, now: float, *, source: str) -> bool:
        job = self.runs.store.find_job(name)
        if job is None or job.state.finished:
            log.warning("cancel %s (%s): no live job by that name", name, source)
            return False
        self.runs.store.update_job(job.job_id, self.runs.wall(), cancel_requested=1)
        self.runs.event(job.job_id, "cancel", f"cancel requested by {source}")
        live = self.runs.live_for(job.job_id)
        if live is not None:
            self.stop(live, "cancelled", (f"cancel requested by {source}",), now)
        else:
            self.runs.set_state(job, JobState.CANCELLED, f"cancelled by {source}")
        return True

    def stop_all(self, now: float, reason: str) -> None:
        for live in list(self.runs.live.values()):
            if live.stop_reason is None:
                self.runs.store.update_job(live.job_id, self.runs.wall(), cancel_requested=1)
                self.stop(live, "cancelled", (reason,), now)

    def restore(self, now: float) -> None:
        """Re-adopt attempts recorded as running; a dead one is finished with its real exit status."""
        for attempt in self.runs.store.attempts(live_only=True):
            job = self.runs.store.get_job(attempt.job_id)
            assert job is not None
            try:
                spec = self.runs.spec(job)
            except Exception as error:  # e.g. stored by an older mkd with a value now out of range
                self._give_up_on(attempt, job, error)
                continue
            live = self._adopt(attempt, spec, now)
            self.runs.live[attempt.id] = live
            alive = live.handle.pid is not None or live.handle.slurm_job_id is not None
            alive = alive and self.runs.executor.poll(live.handle, live.dir).exit is None
            child = child_info(live.dir)
            message = (
                f"re-adopted attempt {attempt.number} ({_where(live.handle)}, run pid {child.pid if child else '-'})"
                if alive
                else f"attempt {attempt.number} ended while mkd was down"
            )
            self.runs.event(attempt.job_id, "restore", message)
            if job.state in (JobState.QUEUED, JobState.RETRY_WAIT, JobState.STEPPING):
                # killed between the attempt's row (or shim) and marking the job running: say what is true
                why = f"attempt {attempt.number} ({attempt.stage_label}) was started just before mkd stopped"
                self.runs.set_state(job, JobState.RUNNING, why, plan=attempt.params, next_attempt_at=None)

    def _give_up_on(self, attempt: AttemptRecord, job: JobRecord, error: Exception) -> None:
        """A stored job this mkd cannot read any more: stop its run (no one would supervise it) and fail it."""
        log.error("job %s: cannot read its stored spec, stopping its run: %s", job.job_id, error)
        self.runs.store.bump("internal_errors_total.judge")
        attempt_dir = Path(attempt.dir)
        recorded = RunRef.from_json(attempt.run_ref) if attempt.run_ref else None
        handle = self.runs.executor.adopt(recorded, attempt_dir)
        if handle is not None:
            self.runs.executor.stop(handle, attempt_dir, kill_now=True)
        verdict = judge_error(error)
        why = f"mkd cannot read this job's stored spec ({type(error).__name__}: {error}); its run was stopped"
        with self.runs.store.batch():
            self.runs.store.update_attempt(
                attempt.id,
                state=AttemptState.ENDED,
                ended_at=self.runs.wall(),
                outcome=verdict.outcome,
                failure_class=FailureClass.MKD_ERROR.value,
                evidence=[why],
            )
            self.runs.set_state(job, JobState.FAILED, why)

    def _adopt(self, attempt: AttemptRecord, spec: JobSpec, now: float) -> LiveAttempt:
        """The attempt as a live one again: its executor handle, its console read up to now, its clocks."""
        attempt_dir = Path(attempt.dir)
        recorded = RunRef.from_json(attempt.run_ref) if attempt.run_ref else None
        if recorded is None and attempt.shim_pid:
            recorded = RunRef(pid=attempt.shim_pid, start_ticks=attempt.shim_start)
        handle = self.runs.executor.adopt(recorded, attempt_dir)
        stage = spec.effective_stages[attempt.stage_index]
        live = LiveAttempt(
            attempt_id=attempt.id,
            job_id=attempt.job_id,
            dir=attempt_dir,
            console=attempt_dir / "console.log",
            handle=handle or RunRef(),
            started_mono=now - max(0.0, self.runs.wall() - attempt.started_at),
            gpu_indices=attempt.params.gpu_indices,
            gpu_uuids=attempt.params.gpu_uuids,
            timeout_seconds=stage_timeout(stage),
            stage_kind=stage.kind,
            stop_reason=attempt.stop_reason,
            stop_sent_mono=now if attempt.stop_reason else None,
        )
        while live.read_new() != ([], []):
            pass
        if live.last is not None:
            live.last_progress_mono = now
        return live


def _where(handle: RunRef | None) -> str:
    if handle is not None and handle.slurm_job_id:
        return f"Slurm job {handle.slurm_job_id}"
    return f"shim {handle.pid if handle else '-'}"


def _disk_full(path: Path) -> bool:
    try:
        return os.statvfs(path).f_bavail == 0
    except OSError:
        return False
