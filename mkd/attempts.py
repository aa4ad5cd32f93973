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
from mkd.config import DaemonConfig, Layout
from mkd.engine import ExitRecord, LaunchSpec, child_info
from mkd.executors.base import Executor, LaunchRequest, RunRef, RunStatus
from mkd.executors.local import LocalExecutor
from mkd.failures import FailureClass
from mkd.fsutil import atomic_write, atomic_write_json
from mkd.gpu_report import gpu_report_line
from mkd.gpus import GpuReading, attribute_processes
from mkd.live import LiveAttempt
from mkd.mimickit.classify import ExitInfo, classify, row_has_nan, scan_live
from mkd.mimickit.results import check_train_artifacts
from mkd.mirror import place_job_file
from mkd.policy import Decision, Observation, decide
from mkd.procs import read_stat
from mkd.scheduler import Placement, Request, foreign_bytes, place
from mkd.snapshot import DaemonView, JobView
from mkd.spec import JobSpec, MimicKitWorkload, Stage
from mkd.stages import (
    CAPACITY_FAILURES,
    initial_plan,
    probe_record,
    probe_samples,
    sweep_best,
    sweep_point_plan,
    sweep_tsv,
)
from mkd.states import LIVE, AttemptState, JobState, Outcome
from mkd.store import AttemptRecord, JobRecord, Store, StoreError
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
            if job.job_id in busy or job.state == JobState.HELD:
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
        plan = job.plan or initial_plan(spec, stage, job.stage_data)
        if not job.plan:
            self.store.update_job(job.job_id, self.wall(), plan=plan, stage_data=job.stage_data)
        if stage.kind == "visualize":
            ok, why = display_available(_env() | dict(self.config.base_env) | dict(spec.env))
            if not ok:
                self._stage_result(job, label, {"skipped": why})
                self._advance(job, spec, f"visualize stage {label} skipped: {why}")
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

    def _place(self, job: JobRecord, spec: JobSpec, plan: dict[str, Any]) -> Placement | str:
        resources = spec.resources
        named = None
        if resources.devices is not None:
            named = tuple(int(d.split(":")[1]) for d in resources.devices if d.startswith("cuda"))
        request = Request(
            count=int(plan.get("gpus", 0)),
            named=named[: int(plan.get("gpus", 0))] if named else None,
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
        last_end = job.stage_data.get("last_end_wall")
        last_gpus = set(job.stage_data.get("last_gpus", []))
        dead = {int(pid) for pid in job.stage_data.get("last_gpu_pids", [])}
        if not last_end or self.wall() - float(last_end) > spec.watch.gpu_memory_free_wait.total_seconds():
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
        plan: dict[str, Any],
        placement: Placement,
        now: float,
    ) -> None:
        plan = dict(plan)
        if int(plan.get("processes", 1)) > 1 and not plan.get("master_port"):
            plan["master_port"] = self._free_port()
        if stage.kind == "probe" and not plan.get("max_samples"):
            plan["max_samples"] = probe_samples(plan)
        plan["gpu_indices"] = list(placement.indices)
        plan["gpu_uuids"] = list(placement.uuids)
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
                gpu_count=int(plan.get("gpus", 0)),
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
        where = f"num_envs={plan.get('num_envs')} on {devices}" if plan.get("num_envs") else f"on {devices}"
        self._set_state(
            job,
            JobState.RUNNING,
            f"attempt {attempt.number} ({label}) started, {where}",
            plan=plan,
            next_attempt_at=None,
        )

    def _derive_agent_config(self, spec: JobSpec, plan: dict[str, Any], attempt_dir: Path) -> dict[str, Any]:
        overrides = plan.get("agent_overrides") or {}
        workload = spec.workload
        if not overrides or not isinstance(workload, MimicKitWorkload):
            return plan
        mimickit_dir = Path(workload.mimickit_dir or self.layout.mimickit_dir)
        derived = write_derived_agent_config(workload, overrides, mimickit_dir, attempt_dir / "agent_config.yaml")
        return {**plan, "agent_config": str(derived)}

    def _free_port(self) -> int:
        taken = {int(a.params.get("master_port") or 0) for a in self.store.attempts(live_only=True)}
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
            with self.store.batch():  # the attempt's end and its decision land together, or neither
                self._finish(live, exit, now)
            del self.live[live.attempt_id]

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
                params = {**attempt.params, "granted_gpus": list(status.granted_gpus), "node": status.node}
                self.store.update_attempt(live.attempt_id, params=params)
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
        hit = scan_live(lines)
        if hit is not None:
            self.stop(live, hit.failure.value, hit.evidence, now, kill_now=True)
            return
        for row in rows:
            if row_has_nan(row):
                evidence = tuple(f"{k} = {v}" for k, v in row.values.items() if str(v) == "nan")
                self.stop(live, FailureClass.NAN_DIVERGENCE.value, (f"iteration {row.iteration}", *evidence), now)
                return
        watch = self._spec_of(live.job_id).watch
        age = now - live.started_mono
        if live.timeout_seconds is not None and age > live.timeout_seconds:
            self.stop(
                live, FailureClass.TIMEOUT.value, (f"stage timeout of {live.timeout_seconds:.0f} s reached",), now
            )
        elif live.stage_kind in TRAIN_KINDS and live.last_progress_mono is None:
            if age > watch.startup_timeout.total_seconds():
                why = f"no iteration within the start-up timeout ({watch.startup_timeout.total_seconds():.0f} s)"
                self.stop(live, FailureClass.STALL.value, (why,), now)
        elif live.stage_kind not in TRAIN_KINDS and age > watch.startup_timeout.total_seconds() * 2:
            why = f"no result within {2 * watch.startup_timeout.total_seconds():.0f} s"
            self.stop(live, FailureClass.TIMEOUT.value, (why,), now)
        elif (
            live.last_progress_mono is not None and now - live.last_progress_mono > watch.stall_timeout.total_seconds()
        ):
            why = f"no new iteration for {now - live.last_progress_mono:.0f} s (stall timeout)"
            self.stop(live, FailureClass.STALL.value, (why,), now)
        elif live.stage_kind == "probe" and self._probe_passed(live):
            self.stop(live, PASSED_EARLY, ("iteration 1 done, model.pt and log.txt written",), now)

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
        failure, evidence, permanent = self._evaluate(live, exit, stage, attempt)
        outcome = _outcome(exit, live, failure)
        progress = live.progress()
        self.store.update_attempt(
            live.attempt_id,
            state=AttemptState.ENDED,
            ended_at=self.wall(),
            returncode=exit.returncode,
            signal=exit.signal,
            outcome=outcome,
            failure_class=failure,
            evidence=list(evidence),
            progress=progress,
        )
        if exit.lingering_workers:
            self._event(job.job_id, "workers", f"{exit.lingering_workers} worker(s) outlived the root; killed")
        if failure and failure not in ("cancelled", "paused"):
            self._event(job.job_id, "failure", f"attempt {attempt.number}: {failure}", {"evidence": list(evidence)})
        had_progress = live.last is not None or live.parser.test_result is not None
        attempt = replace(attempt, progress=progress)
        self._after(job, spec, stage, attempt, live, failure, permanent, had_progress)

    def _evaluate(
        self, live: LiveAttempt, exit: ExitRecord, stage: Stage, attempt: AttemptRecord
    ) -> tuple[str | None, tuple[str, ...], bool]:
        """(failure class or None, evidence, permanent) for an ended attempt."""
        if exit.lost:
            killed = self.executor.kill_leftovers(live.handle, live.dir)
            evidence = [f"the attempt's shim died without an exit record; {killed} process(es) killed"]
            if _disk_full(live.dir):
                evidence.append(f"the disk of {live.dir} is full (No space left on device)")
            return "lost", tuple(evidence), False
        if exit.spawn_error:
            return FailureClass.CONFIG_ERROR.value, (exit.spawn_error,), True
        if live.stop_reason == PASSED_EARLY:
            return None, (), False
        if live.stop_reason in LIVE_SIGNATURE_CLASSES:
            # killed on a live signature: the whole log, read now, may say more precisely why
            again = classify(
                _tail(live.console),
                ExitInfo(1, None),
                multi_device=int(attempt.params.get("processes", 1)) > 1,
                stage_kind="probe" if stage.kind == "sweep" else stage.kind,
                had_progress=live.last is not None,
            )
            if again is not None and again.failure not in (FailureClass.UNKNOWN, FailureClass.LONG_RUN_EXITED):
                return again.failure.value, again.evidence, again.permanent
        if live.stop_reason is not None:
            return live.stop_reason, live.stop_evidence, live.stop_reason == FailureClass.NAN_DIVERGENCE.value
        tail = _tail(live.console)
        if stage.kind == "command":
            return _command_failure(exit, tail)
        out_dir = live.dir / "out"
        artifacts = check_train_artifacts(out_dir) if stage.kind in TRAIN_KINDS else {}
        checks = stage.checks
        missing = [name for name, ok in artifacts.items() if not ok and name.replace(".", "_") in checks]
        result = classify(
            tail,
            ExitInfo(exit.returncode, exit.signal),
            multi_device=int(attempt.params.get("processes", 1)) > 1,
            stage_kind="probe" if stage.kind == "sweep" else stage.kind,
            outputs_missing=bool(missing) and exit.returncode == 0,
            had_progress=live.last is not None,
        )
        if result is not None:
            return result.failure.value, result.evidence, result.permanent
        if "mean_return" in checks and live.parser.test_result is None:
            return FailureClass.UNKNOWN.value, ("exited 0 but printed no Mean Return",), False
        if "exit_zero" in checks and exit.returncode != 0:
            return FailureClass.UNKNOWN.value, (f"exit status {exit.returncode} signal {exit.signal}",), False
        return None, (), False

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
        job = self.store.get_job(job.job_id) or job
        data = dict(job.stage_data)
        data["last_end_wall"] = self.wall()
        data["last_gpus"] = list(live.gpu_uuids)
        data["last_gpu_pids"] = sorted(live.gpu_pids)
        data["attempts"] = int(data.get("attempts", 0)) + 1
        data["no_progress"] = 0 if had_progress else int(data.get("no_progress", 0)) + 1
        if stage.kind == "probe":
            data["gpu_seconds_probing"] = float(data.get("gpu_seconds_probing", 0.0)) + (
                (self.wall() - attempt.started_at) * max(1, len(live.gpu_uuids))
            )
        job.stage_data = data
        if failure == "cancelled" or job.cancel_requested:
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            self._set_state(job, JobState.CANCELLED, "cancelled")
            return
        if failure == "paused":  # mkd pause: held; `mkd resume` goes on from the last model.pt
            data["attempts"] = max(0, int(data["attempts"]) - 1)  # a pause is no failed try
            resumable = stage.kind in ("train", "warmup", "long_run")
            plan = self._resume_plan(dict(job.plan), attempt, data) if resumable else dict(job.plan)
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            self._set_state(job, JobState.HELD, f"paused at attempt {attempt.number}; `mkd resume` goes on", plan=plan)
            return
        label = stage.label(job.stage_index)
        if stage.kind == "probe" and (failure is None or failure in CAPACITY_FAILURES):
            self._probe_step(job, spec, stage, attempt, failure is None)
            return
        if stage.kind == "sweep" and (failure is None or failure in CAPACITY_FAILURES or permanent):
            self._sweep_step(job, spec, stage, attempt, live, failure)
            return
        if failure is None:
            self._passed(job, spec, stage, label, attempt)
            return
        obs = Observation(
            stage_kind=stage.kind,
            failure=failure,
            permanent=permanent,
            gpus=int(attempt.params.get("gpus", 0)),
            processes=int(attempt.params.get("processes", 1)),
            had_progress=had_progress,
            foreign_memory=self._foreign_memory(live),
        )
        decision = decide(
            obs,
            dict(job.plan),
            spec.retry,
            attempts_in_stage=int(data["attempts"]),
            no_progress_streak=int(data["no_progress"]),
            rng=self.rng,
        )
        self._apply(job, spec, stage, label, attempt, decision)

    def _foreign_memory(self, live: LiveAttempt) -> bool:
        mine = self.mkd_pids()
        return any(
            foreign_bytes(g, mine) > self.config.gpu.busy_memory for g in self.gpu.gpus if g.uuid in live.gpu_uuids
        )

    def _apply(
        self, job: JobRecord, spec: JobSpec, stage: Stage, label: str, attempt: AttemptRecord, decision: Decision
    ) -> None:
        data = dict(job.stage_data)
        if decision.action == "fail":
            self._stage_result(job, label, {"passed": False, "reason": decision.reason})
            if stage.on_fail == "continue":
                self._advance(job, spec, f"stage {label} failed ({decision.reason}); continuing")
                return
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            self._set_state(job, JobState.FAILED, decision.reason)
            return
        plan = {**job.plan, **decision.changes}
        if decision.resume:
            plan = self._resume_plan(plan, attempt, data)
        self.store.bump("retries_total")
        fallbacks = list(data.get("fallbacks", []))
        if decision.changes:
            fallbacks.append({"stage": label, "attempt": attempt.number, "step": decision.reason})
        data["fallbacks"] = fallbacks
        self.store.update_job(job.job_id, self.wall(), stage_data=data)
        self._set_state(
            job,
            JobState.RETRY_WAIT,
            f"{decision.reason}; next attempt in {decision.delay_seconds:.1f} s",
            plan=plan,
            next_attempt_at=self.wall() + decision.delay_seconds,
        )

    def _resume_plan(self, plan: dict[str, Any], attempt: AttemptRecord, data: dict[str, Any]) -> dict[str, Any]:
        """Continue a long run from its last model.pt; MimicKit restarts its counters, so we keep offsets."""
        model = Path(attempt.dir) / "out" / "model.pt"
        done = int(attempt.progress.get("samples") or 0)
        data["samples_offset"] = int(data.get("samples_offset", 0)) + done
        data["iteration_offset"] = int(data.get("iteration_offset", 0)) + int(attempt.progress.get("iteration") or 0)
        out = dict(plan)
        if model.exists():
            out["model_file"] = str(model)
        if plan.get("max_samples"):
            out["max_samples"] = max(1, int(plan["max_samples"]) - done)
        return out

    def _passed(self, job: JobRecord, spec: JobSpec, stage: Stage, label: str, attempt: AttemptRecord) -> None:
        data = dict(job.stage_data)
        out_dir = Path(attempt.dir) / "out"
        result: dict[str, Any] = {"passed": True, "attempt": attempt.number, "num_envs": job.plan.get("num_envs")}
        keep = ("iteration", "samples", "train_return", "test_return", "median_samples_per_second")
        result.update({k: attempt.progress[k] for k in keep if attempt.progress.get(k) is not None})
        if stage.kind in TRAIN_KINDS:
            model = out_dir / "model.pt"
            if model.exists():
                data.setdefault("models", {})[label] = str(model)
                data["latest_model"] = str(model)
        if stage.kind == "warmup":
            data["num_envs"] = job.plan.get("num_envs")
            result["promoted_num_envs"] = job.plan.get("num_envs")
        test = attempt.progress.get("test_result")
        if test:
            result["test_result"] = test
        job.stage_data = data
        self.store.update_job(job.job_id, self.wall(), stage_data=data)
        self._stage_result(job, label, result)
        self._advance(job, spec, f"stage {label} passed")

    def _stage_result(self, job: JobRecord, label: str, result: dict[str, Any]) -> None:
        fresh = self.store.get_job(job.job_id) or job
        data = dict(fresh.stage_data)
        data.setdefault("results", {})[label] = result
        job.stage_data = data
        self.store.update_job(job.job_id, self.wall(), stage_data=data)

    def _advance(self, job: JobRecord, spec: JobSpec, reason: str) -> None:
        """Move to the next stage (keeping what later stages use), or finish the job."""
        fresh = self.store.get_job(job.job_id) or job
        data = dict(fresh.stage_data)
        index = fresh.stage_index + 1
        if index >= len(spec.effective_stages):
            self._set_state(fresh, JobState.SUCCEEDED, reason)
            return
        keep = ("models", "latest_model", "num_envs", "results", "fallbacks", "gpu_seconds_probing", "sweep_best")
        data = {k: v for k, v in data.items() if k in keep}
        nxt = spec.effective_stages[index]
        plan = initial_plan(spec, nxt, data)
        self.store.update_job(job.job_id, self.wall(), stage_index=index, stage_data=data, plan=plan)
        state = JobState.RUNNING if fresh.state == JobState.RUNNING else JobState.QUEUED
        self._set_state(fresh, state, f"{reason}; next stage {nxt.label(index)}", next_attempt_at=self.wall())

    # --- probe ladder and sweep ------------------------------------------------------------

    def _probe_step(self, job: JobRecord, spec: JobSpec, stage: Stage, attempt: AttemptRecord, passed: bool) -> None:
        data = dict(job.stage_data)
        num_envs = int(job.plan["num_envs"])
        step = probe_record(data["probe"], num_envs, passed)
        data["probe"] = step.probe
        data["attempts"] = 0
        label = stage.label(job.stage_index)
        self._event(job.job_id, "probe", f"probe num_envs={num_envs}: {'pass' if passed else 'fail'}")
        if step.next_num_envs is not None:
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            plan = {**job.plan, "num_envs": step.next_num_envs, "max_samples": stage.point_max_samples}
            self._set_state(
                job,
                JobState.RETRY_WAIT,
                f"next probe num_envs={step.next_num_envs}",
                plan=plan,
                next_attempt_at=self.wall(),
            )
            return
        if step.found is not None:
            data["num_envs"] = step.found
            job.stage_data = data
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            self._stage_result(
                job,
                label,
                {"passed": True, "num_envs": step.found, "probes": step.probe["tried"], "gpus": job.plan.get("gpus")},
            )
            self._advance(job, spec, f"probe ladder chose num_envs={step.found}")
            return
        multi = int(job.plan.get("processes", 1)) > 1
        if multi and spec.retry.single_device_fallback:
            from mkd.stages import probe_begin, probe_mid

            assert stage.ladder is not None
            data["probe"] = probe_begin(stage.ladder)
            rung = data["probe"]["rungs"][probe_mid(data["probe"])]
            fallbacks = [
                *data.get("fallbacks", []),
                {
                    "stage": label,
                    "attempt": attempt.number,
                    "step": "every rung failed on several devices: single device",
                },
            ]
            data["fallbacks"] = fallbacks
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            plan = {**job.plan, "gpus": min(1, int(job.plan.get("gpus", 0))), "processes": 1, "num_envs": rung}
            self._set_state(
                job,
                JobState.RETRY_WAIT,
                "every rung failed: single-device probe ladder",
                plan=plan,
                next_attempt_at=self.wall(),
            )
            return
        self.store.update_job(job.job_id, self.wall(), stage_data=data)
        decision = Decision("fail", "probe ladder: no rung passed")
        self._apply(job, spec, stage, label, attempt, decision)

    def _sweep_step(
        self,
        job: JobRecord,
        spec: JobSpec,
        stage: Stage,
        attempt: AttemptRecord,
        live: LiveAttempt,
        failure: str | None,
    ) -> None:
        assert stage.points is not None
        data = dict(job.stage_data)
        sweep = dict(data["sweep"])
        index = int(sweep["index"])
        point = stage.points[index]
        util = live.mean_utilization()
        row = {
            "point": index + 1,
            "num_envs": point.num_envs,
            "agent_overrides": dict(point.agent_overrides),
            "samples_per_second": live.median_samples_per_second(),
            "gpu_utilization_pct": util,
            "passed": failure is None,
            "failure": failure,
        }
        rows = [*sweep["rows"], row]
        sweep.update(index=index + 1, rows=rows)
        data["sweep"] = sweep
        data["attempts"] = 0
        label = stage.label(job.stage_index)
        atomic_write(self.job_dir(job.job_id) / f"summary-{label}.tsv", sweep_tsv(rows))
        atomic_write(self.job_dir(job.job_id) / "summary.tsv", sweep_tsv(rows))
        if index + 1 < len(stage.points):
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            plan = {**job.plan, **sweep_point_plan(stage, index + 1)}
            self._set_state(
                job,
                JobState.RETRY_WAIT,
                f"sweep point {index + 2} of {len(stage.points)}",
                plan=plan,
                next_attempt_at=self.wall(),
            )
            return
        best = sweep_best(rows)
        if best is None:
            self.store.update_job(job.job_id, self.wall(), stage_data=data)
            self._apply(job, spec, stage, label, attempt, Decision("fail", "sweep: no point passed"))
            return
        data["num_envs"] = best["num_envs"]
        data["sweep_best"] = best
        job.stage_data = data
        self.store.update_job(job.job_id, self.wall(), stage_data=data)
        self._stage_result(job, label, {"passed": True, "best": best, "points": len(rows)})
        self._advance(job, spec, f"sweep best point {best['point']} (num_envs={best['num_envs']})")

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
                gpu_indices=tuple(attempt.params.get("gpu_indices", [])),
                gpu_uuids=tuple(attempt.params.get("gpu_uuids", [])),
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
            if job.state in (JobState.QUEUED, JobState.RETRY_WAIT):
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
        offset = int(job.stage_data.get("samples_offset", 0))
        samples = progress.get("samples")
        gpus = live.gpu_indices if live else tuple(summary.get("params", {}).get("gpu_indices", []))
        return JobView(
            job_id=job.job_id,
            state=job.state.value,
            stage=stage.label(job.stage_index),
            attempt=int(summary.get("attempts", 0)),
            num_envs=job.plan.get("num_envs"),
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


def _outcome(exit: ExitRecord, live: LiveAttempt, failure: str | None) -> str:
    if exit.lost:
        return Outcome.LOST
    if exit.spawn_error:
        return Outcome.SPAWN_FAILED
    if live.stop_reason is not None:
        return Outcome.SUCCEEDED if failure is None else Outcome.STOPPED
    if exit.signal is not None:
        return Outcome.KILLED
    return Outcome.SUCCEEDED if failure is None else Outcome.FAILED


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


def _command_failure(exit: ExitRecord, tail: str) -> tuple[str | None, tuple[str, ...], bool]:
    """A plain command has no log signatures: its exit status decides."""
    if exit.returncode == 0:
        return None, (), False
    last = tuple(tail.replace("\r", "\n").splitlines()[-5:])
    if exit.signal is not None:
        return FailureClass.KILLED.value, (f"killed by signal {exit.signal}", *last), False
    return FailureClass.UNKNOWN.value, (f"exit status {exit.returncode}", *last), False


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
