"""Jobs through their stages: start attempts, watch them, decide what comes next.

The daemon's loop calls `observe`, `start_runnable` and `on_gpu_reading`; this module
turns those into store changes. Decisions come from `mkd.policy` (retries) and
`mkd.stages` (probe ladder, sweep); classification from `mkd.mimickit.classify`; processes from
`mkd.engine`. Nothing here parses MimicKit's text itself.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mkd import postmortem, report
from mkd.book import Book
from mkd.config import DaemonConfig, Layout
from mkd.engine import ExitRecord, LaunchSpec, child_info
from mkd.executors.base import Executor, LaunchRequest, RunRef, RunStatus
from mkd.executors.local import LocalExecutor
from mkd.failures import FailureClass
from mkd.fsutil import atomic_write, atomic_write_json
from mkd.gpu_report import gpu_report_line
from mkd.gpus import GpuReading, attribute_processes
from mkd.lifecycle import Ended, Job, after_attempt, skip_stage
from mkd.live import LiveAttempt
from mkd.livecheck import RunFacts, check
from mkd.memory import Plan
from mkd.mimickit.results import check_train_artifacts
from mkd.mirror import place_job_file
from mkd.procs import read_stat
from mkd.scheduler import Placement, Request, foreign_bytes, place
from mkd.snapshot import DaemonView, JobView
from mkd.spec import JobSpec, MimicKitWorkload, Stage
from mkd.stages import plan_stage, probe_samples
from mkd.states import LIVE, AttemptState, JobState
from mkd.store import AttemptRecord, JobRecord, Store, StoreError
from mkd.verdict import AttemptEnd, Verdict, judge, judge_error
from mkd.workload import TRAIN_KINDS, build_command, display_available, stage_timeout, write_derived_agent_config

log = logging.getLogger("mkd.attempts")
CONSOLE_TAIL_BYTES = 64 * 1024
PROGRESS_WRITE_SECONDS = 5.0  # progress into the store (mkd status); metrics read it live
STATUS_WRITE_SECONDS = 10.0  # a live job's status.json; report.md at every state change and each minute
REPORT_WRITE_SECONDS = 60.0
START_SCAN_SECONDS = 10.0  # a safety net: pokes and backoff deadlines start jobs sooner
STOP_ESCALATE_EXTRA_SECONDS = 5.0
PASSED_EARLY = "probe_passed"
LIVE_SIGNATURE_CLASSES = frozenset(
    {FailureClass.STARTUP_MULTI_DEVICE.value, FailureClass.NCCL_ABORT_HANG.value, FailureClass.PORT_IN_USE.value}
)


class AttemptRunner:
    def __init__(
        self,
        config: DaemonConfig,
        layout: Layout,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        self.store = store
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.executor: Executor = executor if executor is not None else LocalExecutor()
        self.book = Book(store, wall, layout.runs_dir)
        self.live: dict[int, LiveAttempt] = {}
        self.gpu = GpuReading.unavailable("no GPU sample yet", 0.0)
        self._specs: dict[str, JobSpec] = {}
        self._waiting: dict[str, str] = {}
        self._progress_written: dict[int, float] = {}
        self._progress_due: list[LiveAttempt] = []
        self._gpu_generation = 0  # bumped at each GPU reading: keys the owners cache
        self._owners_cache: tuple[tuple[int, tuple[tuple[int, str], ...]], dict[int, str]] | None = None
        self._status_written: dict[str, float] = {}
        self._report_written: dict[str, float] = {}
        self._gpu_report_at: dict[str, float] = {}
        self._dirty = True
        self._last_start_scan = -1e9
        self._next_due_wall: float | None = None  # the earliest backoff that ends after the last start scan

    # --- helpers ----------------------------------------------------------------------------

    def spec(self, job: JobRecord) -> JobSpec:
        """The job's spec, its [retry] and [watch] filled in from the daemon's defaults where it is silent."""
        found = self._specs.get(job.job_id)
        if found is None:
            defaults = {
                "retry": self.config.retry.model_dump(mode="json"),
                "watch": self.config.watch.model_dump(mode="json"),
            }
            found = JobSpec.model_validate(deep_merge(defaults, job.spec))
            self._specs[job.job_id] = found
        return found

    def reconfigure(self, config: DaemonConfig) -> None:
        """A reloaded config: later decisions use its defaults and limits."""
        self.config = config
        self._specs.clear()

    def _spec_of(self, job_id: str) -> JobSpec:
        found = self._specs.get(job_id)
        if found is not None:
            return found
        job = self.store.get_job(job_id)
        assert job is not None
        return self.spec(job)

    def job_dir(self, job_id: str) -> Path:
        return self.layout.runs_dir / job_id

    def _live_for(self, job_id: str) -> LiveAttempt | None:
        return next((a for a in self.live.values() if a.job_id == job_id), None)

    def _event(self, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.store.add_event(job_id, self.wall(), kind, message, data)
        log.info("job %s: %s", job_id, message)

    def _set_state(self, job: JobRecord, state: JobState, reason: str, **fields: Any) -> None:
        self.store.set_job_state(job.job_id, state, reason, self.wall(), **fields)
        self.poke()
        log.info("job %s: %s (%s)", job.job_id, state, reason)

    def publish_pending(self) -> None:
        """Write the files people read (jobs/ mirror, status.json, report.md) for jobs whose state changed.

        The store marks a job unpublished in the same transaction as its state change, so a
        daemon killed before writing the files writes them at its next start.
        """
        for job_id in self.store.unpublished():
            job = self.store.get_job(job_id)
            if job is None:
                continue
            try:
                place_job_file(self.layout, job_id, job.state, text=self.store.source_text(job_id))
                self.write_status(job_id)
            except OSError as error:  # a mirror is not the truth: log, count, try again next tick
                log.error("job %s: cannot write its files: %s", job_id, error)
                self.store.bump("intake_errors_total")
                return
            except Exception:  # one job's files must not stop the loop (nor loop on the error)
                log.exception("job %s: error while writing its files", job_id)
                self.store.bump("internal_errors_total")
            self.store.mark_published(job_id)

    # --- starting ---------------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed (a job arrived, an attempt ended, GPUs changed): look for work at once."""
        self._dirty = True

    def start_runnable(self, now: float) -> None:
        """Start what can start. Runs when poked, and at least every second (backoffs expire)."""
        due = self._next_due_wall is not None and self.wall() >= self._next_due_wall
        if not self._dirty and not due and now - self._last_start_scan < START_SCAN_SECONDS:
            return
        self._dirty = False
        self._last_start_scan = now
        wall = self.wall()
        busy = {a.job_id for a in self.live.values()}
        self._next_due_wall = None
        for job in self.store.jobs(set(LIVE)):
            if job.job_id in busy:
                continue
            if job.cancel_requested:
                self._set_state(job, JobState.CANCELLED, "cancelled before it started")
                continue
            if job.next_attempt_at is not None and job.next_attempt_at > wall:
                self._next_due_wall = min(self._next_due_wall or job.next_attempt_at, job.next_attempt_at)
                continue
            if len(self.live) >= self.config.max_running:
                return
            try:
                self._start(job, now)
            except StoreError:
                raise
            except Exception as error:  # a job that cannot start must not block the queue
                log.exception("job %s: cannot start", job.job_id)
                self.store.bump("internal_errors_total")
                self._set_state(job, JobState.FAILED, f"mkd could not start it: {type(error).__name__}: {error}")

    def seconds_until_due(self) -> float | None:
        """How long until a backoff ends and a job may start (the loop sleeps no longer), or None."""
        if self._next_due_wall is None:
            return None
        return max(0.0, self._next_due_wall - self.wall())

    def _start(self, job: JobRecord, now: float) -> None:
        spec = self.spec(job)
        stages = spec.effective_stages
        stage = stages[job.stage_index]
        label = stage.label(job.stage_index)
        plan = job.plan
        if plan is None:
            plan, memory = plan_stage(spec, stage, job.memory)
            self.store.update_job(job.job_id, self.wall(), plan=plan, memory=memory)
            job = replace(job, plan=plan, memory=memory)
        if stage.kind == "visualize":
            ok, why = display_available(_env() | dict(self.config.base_env) | dict(spec.env))
            if not ok:
                step = skip_stage(self._lifecycle_job(job, spec), why, running=job.state is not JobState.QUEUED)
                self.book.apply(job.job_id, step)
                self.poke()
                return
        placement = self._place(job, spec, plan)
        if isinstance(placement, str):
            if self._waiting.get(job.job_id) != placement:
                self._waiting[job.job_id] = placement
                self.store.update_job(job.job_id, self.wall(), reason=placement)
                self._event(job.job_id, "waiting", placement)
            return
        self._waiting.pop(job.job_id, None)
        self._launch(job, spec, stage, label, plan, placement, now)

    def _place(self, job: JobRecord, spec: JobSpec, plan: Plan) -> Placement | str:
        resources = spec.resources
        named = None
        if resources.devices is not None:
            named = tuple(int(d.split(":")[1]) for d in resources.devices if d.startswith("cuda"))
        request = Request(
            count=plan.gpus,
            named=named[: plan.gpus] if named else None,
            share=resources.share,
            min_free_bytes=resources.min_free_memory,
        )
        held: dict[str, set[str]] = {}
        for live in self.live.values():
            for uuid in live.gpu_uuids:
                held.setdefault(uuid, set()).add(live.job_id)
        found = place(request, self.gpu, held, self.mkd_pids(), self.config.gpu.busy_memory)
        if isinstance(found, str):
            return found
        return self._memory_freed(job, spec, found)

    def _memory_freed(self, job: JobRecord, spec: JobSpec, placement: Placement) -> Placement | str:
        """Before a retry on the same GPUs, wait (bounded) until the dead attempt's own GPU processes are gone.

        Only its processes count: another user's process on a shared GPU is not going away, and
        waiting for it cost every retry the whole bound.
        """
        last_end = job.memory.stage.last_end_wall
        last_gpus = set(job.memory.stage.last_gpus)
        dead = set(job.memory.stage.last_gpu_pids)
        if not last_end or self.wall() - last_end > spec.watch.gpu_memory_free_wait.total_seconds():
            return placement
        for gpu in self.gpu.gpus:
            if gpu.uuid in last_gpus and gpu.uuid in placement.uuids:
                left = [p for p in gpu.processes if p.pid in dead]
                held_bytes = sum(p.used_bytes or 0 for p in left)
                if left and held_bytes > self.config.gpu.memory_freed_below:
                    held = held_bytes >> 20
                    pids = " ".join(str(p.pid) for p in left)
                    return f"waiting for the last attempt's process(es) {pids} to leave GPU{gpu.index} ({held} MiB)"
        return placement

    def _launch(
        self,
        job: JobRecord,
        spec: JobSpec,
        stage: Stage,
        label: str,
        plan: Plan,
        placement: Placement,
        now: float,
    ) -> None:
        if plan.processes > 1 and not plan.master_port:
            plan = replace(plan, master_port=self._free_port())
        if stage.kind == "probe" and not plan.max_samples:
            plan = replace(plan, max_samples=probe_samples(plan))
        plan = replace(plan, gpu_indices=placement.indices, gpu_uuids=placement.uuids)
        number = len(self.store.attempts(job.job_id)) + 1
        attempt_dir = self.job_dir(job.job_id) / "attempts" / f"{number:02d}-{label}"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        try:
            plan = self._derive_agent_config(spec, plan, attempt_dir)
        except (ValueError, OSError) as error:
            self._set_state(job, JobState.FAILED, f"agent overrides: {error}")
            return
        command = build_command(
            config=self.config,
            layout=self.layout,
            spec=spec,
            stage=stage,
            plan=plan,
            gpu_indices=list(placement.indices),
            attempt_dir=attempt_dir,
        )
        atomic_write_json(
            attempt_dir / "command.json",
            {"argv": command.argv, "cwd": command.cwd, "env": command.env, "nccl": command.nccl_applied},
            mode=0o600,  # holds the run's whole environment
        )
        attempt = self.store.add_attempt(
            job_id=job.job_id,
            stage_index=job.stage_index,
            stage_label=label,
            params=plan,
            dir=str(attempt_dir),
            now=self.wall(),
        )
        console = attempt_dir / "console.log"
        handle = self.executor.launch(
            LaunchRequest(
                job_id=job.job_id,
                attempt_number=attempt.number,
                stage_label=label,
                attempt_dir=attempt_dir,
                spec=LaunchSpec(
                    argv=command.argv,
                    env=command.env,
                    cwd=command.cwd,
                    console=console,
                    grace_seconds=spec.watch.stop_grace.total_seconds(),
                    log_max_bytes=self.config.console_log_max,
                    log_backups=self.config.console_log_backups,
                ),
                gpu_count=plan.gpus,
                gpu_indices=placement.indices,
            )
        )
        self.store.update_attempt(
            attempt.id, shim_pid=handle.pid, shim_start=handle.start_ticks, run_ref=handle.to_json()
        )
        self.live[attempt.id] = LiveAttempt(
            attempt_id=attempt.id,
            job_id=job.job_id,
            dir=attempt_dir,
            console=console,
            handle=handle,
            started_mono=now,
            gpu_indices=placement.indices,
            gpu_uuids=placement.uuids,
            timeout_seconds=stage_timeout(stage),
            stage_kind=stage.kind,
        )
        devices = ",".join(f"GPU{i}" for i in placement.indices) or "no GPU"
        where = f"num_envs={plan.num_envs} on {devices}" if plan.num_envs else f"on {devices}"
        self._set_state(
            job,
            JobState.RUNNING,
            f"attempt {attempt.number} ({label}) started, {where}",
            plan=plan,
            next_attempt_at=None,
        )

    def _derive_agent_config(self, spec: JobSpec, plan: Plan, attempt_dir: Path) -> Plan:
        overrides = plan.agent_overrides
        workload = spec.workload
        if not overrides or not isinstance(workload, MimicKitWorkload):
            return plan
        mimickit_dir = Path(workload.mimickit_dir or self.layout.mimickit_dir)
        derived = write_derived_agent_config(workload, overrides, mimickit_dir, attempt_dir / "agent_config.yaml")
        return replace(plan, agent_config=str(derived))

    def _free_port(self) -> int:
        taken = {a.params.master_port or 0 for a in self.store.attempts(live_only=True)}
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in taken:
                return port

    def mkd_pids(self) -> set[int]:
        """The pids on a GPU that belong to mkd's runs (see gpu_owners)."""
        return set(self.gpu_owners())

    def gpu_owners(self) -> dict[int, str]:
        """GPU process pid -> job_id of the attempt whose process group holds it (workers included).

        Only the few pids NVML reported are looked up in /proc, once per GPU reading and set of
        runs: a scan of all of /proc per attempt per tick was most of the daemon's CPU.
        """
        groups = {pgid: live.job_id for live in self.live.values() if (pgid := self._pgid(live)) is not None}
        key = (self._gpu_generation, tuple(sorted(groups.items())))
        if self._owners_cache is not None and self._owners_cache[0] == key:
            return self._owners_cache[1]
        owners: dict[int, str] = {}
        for pid in {p.pid for gpu in self.gpu.gpus for p in gpu.processes}:
            found = read_stat(pid) if groups else None
            if found is not None and found.pgid in groups:
                owners[pid] = groups[found.pgid]
        self._owners_cache = (key, owners)
        return owners

    def _pgid(self, live: LiveAttempt) -> int | None:
        if live.pgid is None:
            live.pgid = self.executor.process_group(live.dir)
        return live.pgid

    # --- observing --------------------------------------------------------------------------

    def observe(self, now: float) -> None:
        self.executor.tick()
        self._progress_due = []
        for live in list(self.live.values()):
            try:
                self._observe_one(live, now)
            except StoreError:
                raise
            except Exception:  # one broken attempt must not stop the others: log, count, go on
                log.exception("job %s: error while watching attempt %d", live.job_id, live.attempt_id)
                self.store.bump("internal_errors_total")
        self._write_progress()
        for job_id in list(self._status_written):
            if now - self._status_written[job_id] >= STATUS_WRITE_SECONDS and self._live_for(job_id):
                try:
                    self.write_status(job_id, periodic=True)
                except OSError as error:
                    log.error("job %s: cannot write status.json: %s", job_id, error)

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
                self.executor.stop(live.handle, live.dir, kill_now=True)
        status = self.executor.poll(live.handle, live.dir)
        self._note_status(live, status)
        exit = status.exit
        if exit is not None:
            try:
                with self.store.batch():  # the attempt's end and its decision land together, or neither
                    self._finish(live, exit, now)
            except StoreError:
                raise
            except Exception as error:  # ended for good: never judged again at the next tick
                log.exception("job %s: error while finishing attempt %d", live.job_id, live.attempt_id)
                self.store.bump("internal_errors_total")
                self._fail_attempt(live, exit, error)
            del self.live[live.attempt_id]

    def _fail_attempt(self, live: LiveAttempt, exit: ExitRecord, error: Exception) -> None:
        """The attempt's end could not be decided: record it as mkd's error and fail the job, with the evidence."""
        verdict = judge_error(error)
        with self.store.batch():
            self.store.update_attempt(
                live.attempt_id,
                state=AttemptState.ENDED,
                ended_at=self.wall(),
                returncode=exit.returncode,
                signal=exit.signal,
                outcome=verdict.outcome,
                failure_class=FailureClass.MKD_ERROR.value,
                evidence=list(verdict.evidence),
            )
            job = self.store.get_job(live.job_id)
            if job is not None and not job.state.finished:
                self._set_state(job, JobState.FAILED, verdict.evidence[0])

    def _note_status(self, live: LiveAttempt, status: RunStatus) -> None:
        """What an outside scheduler says: why the run still waits, and which GPUs it was given."""
        if status.pending_reason != live.pending_reason:
            live.pending_reason = status.pending_reason
            if status.pending_reason:
                self.store.update_job(live.job_id, self.wall(), reason=f"waiting: {status.pending_reason}")
        if status.granted_gpus is not None and status.granted_gpus != live.granted_gpus:
            live.granted_gpus = status.granted_gpus
            attempt = self.store.get_attempt(live.attempt_id)
            if attempt is not None:
                params = replace(attempt.params, granted_gpus=status.granted_gpus, node=status.node)
                self.store.update_attempt(live.attempt_id, params=params.to_json())
            self._event(live.job_id, "gpus", f"the executor gave it GPU(s) {','.join(status.granted_gpus) or '-'}")

    def _grace(self, live: LiveAttempt) -> float:
        return self._spec_of(live.job_id).watch.stop_grace.total_seconds()

    def _record_progress(self, live: LiveAttempt, now: float) -> None:
        if now - self._progress_written.get(live.attempt_id, -1e9) < PROGRESS_WRITE_SECONDS:
            return
        self._progress_written[live.attempt_id] = now
        self._progress_due.append(live)

    def _write_progress(self) -> None:
        """Every run's new progress in one transaction (one fsync a tick, not one per run)."""
        due = [live for live in self._progress_due if live.attempt_id in self.live]
        self._progress_due = []
        if not due:
            return
        with self.store.batch():
            for live in due:
                fields: dict[str, Any] = {"progress": live.progress()}
                if live.stop_reason is None:  # stopping or ended stays so
                    fields["state"] = AttemptState.RUNNING
                self.store.update_attempt(live.attempt_id, **fields)

    def _check(self, live: LiveAttempt, lines: list[str], rows: list[Any], now: float) -> None:
        """Signatures that mean "stop it now", NaN, and the clocks: stage timeout, start-up, stall."""
        watch = self._spec_of(live.job_id).watch
        child = child_info(live.dir)
        root = read_stat(child.pid) if child is not None else None
        facts = RunFacts(
            stage_kind=live.stage_kind,
            age=now - live.started_mono,
            since_progress=None if live.last_progress_mono is None else now - live.last_progress_mono,
            timeout=live.timeout_seconds,
            startup_timeout=watch.startup_timeout.total_seconds(),
            stall_timeout=watch.stall_timeout.total_seconds(),
            probe_passed=live.stage_kind == "probe" and self._probe_passed(live),
            root_state=None if root is None else root.state,
            root_pid=None if child is None else child.pid,
        )
        wanted = check(facts, lines, rows)
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
        if reason not in ("cancelled", PASSED_EARLY, "shutdown"):
            postmortem.write_bundle(live.dir, live.console, self.gpu, child_info(live.dir))
        self._event(live.job_id, "stop", f"stopping attempt: {reason}", {"evidence": list(evidence)})
        self.store.update_attempt(live.attempt_id, state=AttemptState.STOPPING, stop_reason=reason)
        self.executor.stop(live.handle, live.dir, kill_now=kill_now)

    # --- finishing --------------------------------------------------------------------------

    def _finish(self, live: LiveAttempt, exit: ExitRecord, now: float) -> None:
        live.read_new()
        job = self.store.get_job(live.job_id)
        attempt = self.store.get_attempt(live.attempt_id)
        assert job is not None and attempt is not None
        spec = self.spec(job)
        stage = spec.effective_stages[attempt.stage_index]
        try:
            verdict = judge(self._attempt_end(live, exit, stage, attempt))
        except Exception as error:  # one attempt mkd cannot judge must end, not be judged again each tick
            log.exception("job %s: cannot judge attempt %d", live.job_id, live.attempt_id)
            self.store.bump("internal_errors_total")
            verdict = judge_error(error)
        failure = None if verdict.failure is None else verdict.failure.value
        evidence, permanent = verdict.evidence, verdict.permanent
        progress = live.progress()
        self.store.update_attempt(
            live.attempt_id,
            state=AttemptState.ENDED,
            ended_at=self.wall(),
            returncode=exit.returncode,
            signal=exit.signal,
            outcome=verdict.outcome,
            failure_class=failure,
            evidence=list(evidence),
            progress=progress,
        )
        if exit.lingering_workers:
            self._event(job.job_id, "workers", f"{exit.lingering_workers} worker(s) outlived the root; killed")
        if failure and failure != "cancelled":
            self._event(job.job_id, "failure", f"attempt {attempt.number}: {failure}", {"evidence": list(evidence)})
        had_progress = live.last is not None or live.parser.test_result is not None
        attempt = replace(attempt, progress=progress)
        self._after(job, spec, stage, attempt, live, failure, permanent, had_progress)

    def _attempt_end(self, live: LiveAttempt, exit: ExitRecord, stage: Stage, attempt: AttemptRecord) -> AttemptEnd:
        """Read what the verdict looks at; a lost run's leftovers are killed first."""
        lost = exit.lost
        return AttemptEnd(
            exit=exit,
            stage_kind=stage.kind,
            console_tail=_tail(live.console),
            checks=tuple(stage.checks),
            artifacts=check_train_artifacts(live.dir / "out") if stage.kind in TRAIN_KINDS else None,
            multi_device=attempt.params.processes > 1,
            had_progress=live.last is not None,
            test_result_seen=live.parser.test_result is not None,
            stop_reason=live.stop_reason,
            stop_evidence=live.stop_evidence,
            leftovers_killed=self.executor.kill_leftovers(live.handle, live.dir) if lost else 0,
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
        job = self.store.get_job(job.job_id) or job
        model = Path(attempt.dir) / "out" / "model.pt"
        ended = Ended(
            number=attempt.number,
            plan=attempt.params,
            progress=attempt.progress,
            started_at=attempt.started_at,
            ended_at=self.wall(),
            had_progress=had_progress,
            model_file=str(model) if model.exists() else None,
            gpu_pids=tuple(sorted(live.gpu_pids)),
            foreign_memory=self._foreign_memory(live),
            samples_per_second=live.median_samples_per_second(),
            utilization_pct=live.mean_utilization(),
        )
        verdict = Verdict(None if failure is None else FailureClass(failure), (), permanent)
        step = after_attempt(self._lifecycle_job(job, spec), ended, verdict, self.rng)
        self.book.apply(job.job_id, step, stage_label=stage.label(job.stage_index))
        self.poke()

    def _lifecycle_job(self, job: JobRecord, spec: JobSpec) -> Job:
        stage = spec.effective_stages[job.stage_index]
        plan = job.plan if job.plan is not None else plan_stage(spec, stage, job.memory)[0]
        return Job(spec, job.stage_index, plan, job.memory, job.cancel_requested)

    def _foreign_memory(self, live: LiveAttempt) -> bool:
        mine = self.mkd_pids()
        return any(
            foreign_bytes(g, mine) > self.config.gpu.busy_memory for g in self.gpu.gpus if g.uuid in live.gpu_uuids
        )

    # --- cancel, shutdown, restore ---------------------------------------------------------

    def request_cancel(self, name: str, now: float, *, source: str) -> bool:
        job = self.store.find_job(name)
        if job is None or job.state.finished:
            log.warning("cancel %s (%s): no live job by that name", name, source)
            return False
        self.store.update_job(job.job_id, self.wall(), cancel_requested=1)
        self._event(job.job_id, "cancel", f"cancel requested by {source}")
        live = self._live_for(job.job_id)
        if live is not None:
            self.stop(live, "cancelled", (f"cancel requested by {source}",), now)
        else:
            self._set_state(job, JobState.CANCELLED, f"cancelled by {source}")
        return True

    def stop_all(self, now: float, reason: str) -> None:
        for live in list(self.live.values()):
            if live.stop_reason is None:
                self.store.update_job(live.job_id, self.wall(), cancel_requested=1)
                self.stop(live, "cancelled", (reason,), now)

    def restore(self, now: float) -> None:
        """Re-adopt attempts recorded as running; a dead one is finished with its real exit status."""
        for attempt in self.store.attempts(live_only=True):
            attempt_dir = Path(attempt.dir)
            recorded = RunRef.from_json(attempt.run_ref) if attempt.run_ref else None
            if recorded is None and attempt.shim_pid:
                recorded = RunRef(pid=attempt.shim_pid, start_ticks=attempt.shim_start)
            handle = self.executor.adopt(recorded, attempt_dir)
            job = self.store.get_job(attempt.job_id)
            assert job is not None
            spec = self.spec(job)
            stage = spec.effective_stages[attempt.stage_index]
            started = now - max(0.0, self.wall() - attempt.started_at)
            live = LiveAttempt(
                attempt_id=attempt.id,
                job_id=attempt.job_id,
                dir=attempt_dir,
                console=attempt_dir / "console.log",
                handle=handle or RunRef(),
                started_mono=started,
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
            self.live[attempt.id] = live
            child = child_info(attempt_dir)
            alive = handle is not None and self.executor.poll(handle, attempt_dir).exit is None
            where = (
                f"Slurm job {handle.slurm_job_id}"
                if handle and handle.slurm_job_id
                else f"shim {handle.pid if handle else '-'}"
            )
            message = (
                f"re-adopted attempt {attempt.number} ({where}, run pid {child.pid if child else '-'})"
                if alive
                else f"attempt {attempt.number} ended while mkd was down"
            )
            self._event(attempt.job_id, "restore", message)
            if job.state in (JobState.QUEUED, JobState.RETRY_WAIT, JobState.STEPPING):
                # killed between the attempt's row (or shim) and marking the job running: say what is true
                self._set_state(
                    job,
                    JobState.RUNNING,
                    f"attempt {attempt.number} ({attempt.stage_label}) was started just before mkd stopped",
                    plan=attempt.params,
                    next_attempt_at=None,
                )

    # --- GPUs, status and the published view ------------------------------------------------

    def on_gpu_reading(self, reading: GpuReading, now: float) -> None:
        self.gpu = reading
        self._gpu_generation += 1
        by_uuid = {g.uuid: g for g in reading.gpus}
        owners = self.gpu_owners()
        for live in self.live.values():
            live.gpu_pids.update(pid for pid, job_id in owners.items() if job_id == live.job_id)
            found = [by_uuid[u].utilization_pct for u in live.gpu_uuids if u in by_uuid]
            utils = [u for u in found if u is not None]
            if utils:
                live.util_samples.append(sum(utils) / len(utils))
            self._gpu_report(live, reading, now)

    def _gpu_report(self, live: LiveAttempt, reading: GpuReading, now: float) -> None:
        job = self.store.get_job(live.job_id)
        if job is None:
            return
        every = self.spec(job).watch.gpu_report_every.total_seconds()
        if not live.gpu_uuids or now - self._gpu_report_at.get(live.job_id, -1e9) < every:
            return  # a CPU-only run has no GPU report
        self._gpu_report_at[live.job_id] = now
        stage = self.spec(job).effective_stages[job.stage_index]
        advancing = live.last_progress_mono is not None and now - live.last_progress_mono < max(every, 30.0)
        failures = [a.failure_class for a in self.store.attempts(job.job_id) if a.failure_class]
        line = gpu_report_line(stage.kind, reading, live.gpu_uuids, advancing, failures[-1] if failures else None)
        self.store.add_event(job.job_id, self.wall(), "gpu_report", line)

    def holders(self) -> dict[str, str]:
        return {uuid: live.job_id for live in self.live.values() for uuid in live.gpu_uuids}

    def holders_by_index(self) -> dict[int, str]:
        return {i: live.job_id for live in self.live.values() for i in live.gpu_indices}

    def write_status(self, job_id: str, *, periodic: bool = False) -> None:
        """runs/<job>/status.json and report.md, the people's view of one job.

        A state change writes both, durably. The periodic refresh of a live job (status.json every
        10 s, report.md every minute) skips fsync: the files are rebuilt from the store, and 20
        runs' renders and fsyncs every few seconds were a good part of the daemon's CPU.
        """
        job = self.store.get_job(job_id)
        if job is None:
            return
        clock = self.clock()
        self._status_written[job_id] = clock
        report_due = not periodic or clock - self._report_written.get(job_id, -1e9) >= REPORT_WRITE_SECONDS
        if job.state.finished:
            self._status_written.pop(job_id, None)
            self._report_written.pop(job_id, None)
        elif report_due:
            self._report_written[job_id] = clock
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        attempts = self.store.attempts(job_id)
        live = self._live_for(job_id)
        status = report.status_dict(job, self.spec(job), attempts, live.progress() if live else None, self.wall())
        atomic_write_json(folder / "status.json", status, durable=not periodic)
        if report_due:
            text = report.render_report(job, self.spec(job), attempts, self.store.events(job_id))
            atomic_write(folder / "report.md", text, durable=not periodic)

    def view(self, now: float, started_at: float, tick_seconds: float) -> DaemonView:
        jobs: list[JobView] = []
        retention = self.config.metrics.retention.total_seconds()
        wall = self.wall()
        shown = self.store.jobs(set(LIVE)) + self._recently_finished(wall - retention)
        summaries = self.store.attempt_summaries([j.job_id for j in shown])
        self._forget_all_but({j.job_id for j in shown})
        for job in shown:
            jobs.append(self._job_view(job, now, summaries.get(job.job_id, {})))
        counters = self.store.counters()
        by_state = self.store.count_by_state()
        owners = self.gpu_owners()
        return DaemonView(
            started_at=started_at,
            jobs=tuple(jobs),
            jobs_by_state=by_state,
            attempts_total=counters.get("attempts_total", 0),
            failures_by_class=self.store.failures_by_class(),
            retries_total=counters.get("retries_total", 0),
            queue_length=by_state.get("queued", 0) + by_state.get("retry_wait", 0),
            rejected_files_total=counters.get("rejected_files_total", 0),
            intake_errors_total=counters.get("intake_errors_total", 0),
            gpu=self.gpu,
            gpu_holders=self.holders(),
            gpu_process_bytes=attribute_processes(self.gpu, owners),
            tick_seconds=tick_seconds,
        )

    def _forget_all_but(self, job_ids: set[str]) -> None:
        """Drop per-job caches of jobs no longer shown: a daemon that ran 10,000 jobs keeps none of theirs."""
        for cache in (self._specs, self._waiting, self._gpu_report_at):
            for job_id in [k for k in cache if k not in job_ids]:
                del cache[job_id]
        for attempt_id in [k for k in self._progress_written if k not in self.live]:
            del self._progress_written[attempt_id]

    def _recently_finished(self, since: float) -> list[JobRecord]:
        return [j for j in self.store.jobs_finished_since(since) if j.state.finished]

    def _job_view(self, job: JobRecord, now: float, summary: dict[str, Any]) -> JobView:
        spec = self.spec(job)
        stages = spec.effective_stages
        stage = stages[min(job.stage_index, len(stages) - 1)]
        live = self._live_for(job.job_id)
        finished = job.state.finished
        progress = live.progress() if live else summary.get("progress", {})
        if finished:  # a finished job has no current rate: keep its totals, not its last speed
            progress = {k: v for k, v in progress.items() if "per_second" not in k}
        offset = job.memory.stage.samples_offset
        samples = progress.get("samples")
        gpus = live.gpu_indices if live else tuple(summary.get("params", {}).get("gpu_indices", []))
        return JobView(
            job_id=job.job_id,
            state=job.state.value,
            stage=stage.label(job.stage_index),
            attempt=int(summary.get("attempts", 0)),
            num_envs=None if job.plan is None else job.plan.num_envs,
            devices=tuple(f"cuda:{i}" for i in gpus),
            gpu_uuids=live.gpu_uuids if live else (),
            iteration=_opt_int(progress.get("iteration")),
            samples=None if samples is None else int(samples) + offset,
            samples_per_second=_opt_float(progress.get("samples_per_second")),
            train_return=_opt_float(progress.get("train_return")),
            test_return=_opt_float(progress.get("test_return")),
            train_episode_length=_opt_float(progress.get("train_episode_length")),
            test_episode_length=_opt_float(progress.get("test_episode_length")),
            wall_time_seconds=_opt_float(progress.get("wall_time_seconds")),
            losses={k: float(v) for k, v in (progress.get("losses") or {}).items()},
            seconds_since_progress=None
            if live is None or live.last_progress_mono is None
            else now - live.last_progress_mono,
            best_test_return=_opt_float(progress.get("best_test_return")),
            median_samples_per_second=_opt_float(progress.get("median_samples_per_second")),
            retries=int(summary.get("retries", 0)),
            finished_at=job.finished_at,
            last_failure=summary.get("last_failure"),
        )


def _where(handle: RunRef | None) -> str:
    if handle is not None and handle.slurm_job_id:
        return f"Slurm job {handle.slurm_job_id}"
    return f"shim {handle.pid if handle else '-'}"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, table by table (the job's keys win)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _disk_full(path: Path) -> bool:
    try:
        return os.statvfs(path).f_bavail == 0
    except OSError:
        return False


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - CONSOLE_TAIL_BYTES))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _env() -> dict[str, str]:
    return dict(os.environ)


def _opt_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
