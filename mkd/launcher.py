"""Starting attempts: which queued jobs can run now, where (GPU placement, the wait for a dead
attempt's memory), and the launch itself (plan, derived agent config, command, executor)."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from pathlib import Path

from mkd.engine import LaunchSpec
from mkd.executors.base import LaunchRequest
from mkd.fsutil import atomic_write_json
from mkd.gpu_ledger import GpuLedger
from mkd.lifecycle import skip_stage
from mkd.live import LiveAttempt
from mkd.memory import Plan
from mkd.procs import read_stat
from mkd.runs import Runs
from mkd.scheduler import Placement, Request, place
from mkd.spec import JobSpec, MimicKitWorkload, Stage
from mkd.stages import plan_stage, probe_samples
from mkd.states import LIVE, JobState
from mkd.store import JobRecord, StoreError
from mkd.workload import build_command, display_available, stage_timeout, write_derived_agent_config

log = logging.getLogger("mkd.launcher")
START_SCAN_SECONDS = 10.0  # a safety net: pokes and backoff deadlines start jobs sooner


class Launcher:
    def __init__(self, runs: Runs, ledger: GpuLedger) -> None:
        self.runs = runs
        self.ledger = ledger
        self._waiting: dict[str, str] = {}  # job -> why it waits (said once, not each tick)
        self._last_start_scan = -1e9
        self._next_due_wall: float | None = None  # the earliest backoff that ends after the last start scan

    def forget(self, job_ids: set[str]) -> None:
        for job_id in [k for k in self._waiting if k not in job_ids]:
            del self._waiting[job_id]

    def start_runnable(self, now: float) -> None:
        """Start what can start. Runs when poked, and at least every second (backoffs expire)."""
        due = self._next_due_wall is not None and self.runs.wall() >= self._next_due_wall
        if not self.runs.dirty and not due and now - self._last_start_scan < START_SCAN_SECONDS:
            return
        self.runs.dirty = False
        self._last_start_scan = now
        wall = self.runs.wall()
        busy = {a.job_id for a in self.runs.live.values()}
        self._next_due_wall = None
        for job in self.runs.store.jobs(set(LIVE)):
            if job.job_id in busy or job.state == JobState.HELD:
                continue
            if job.cancel_requested:
                self.runs.set_state(job, JobState.CANCELLED, "cancelled before it started")
                continue
            if job.next_attempt_at is not None and job.next_attempt_at > wall:
                self._next_due_wall = min(self._next_due_wall or job.next_attempt_at, job.next_attempt_at)
                continue
            if len(self.runs.live) >= self.runs.config.max_running:
                return
            try:
                self._start(job, now)
            except StoreError:
                raise
            except Exception as error:  # a job that cannot start must not block the queue
                log.exception("job %s: cannot start", job.job_id)
                self.runs.store.bump("internal_errors_total.start")
                self.runs.set_state(job, JobState.FAILED, f"mkd could not start it: {type(error).__name__}: {error}")

    def seconds_until_due(self) -> float | None:
        """How long until a backoff ends and a job may start (the loop sleeps no longer), or None."""
        if self._next_due_wall is None:
            return None
        return max(0.0, self._next_due_wall - self.runs.wall())

    def _start(self, job: JobRecord, now: float) -> None:
        spec = self.runs.spec(job)
        stages = spec.effective_stages
        stage = stages[job.stage_index]
        label = stage.label(job.stage_index)
        plan = job.plan
        if plan is None:
            plan, memory = plan_stage(spec, stage, job.memory)
            self.runs.store.update_job(job.job_id, self.runs.wall(), plan=plan, memory=memory)
            job = replace(job, plan=plan, memory=memory)
        if stage.kind == "visualize":
            ok, why = display_available(_env() | dict(self.runs.config.base_env) | dict(spec.env))
            if not ok:
                step = skip_stage(self.runs.lifecycle_job(job, spec), why, running=job.state is not JobState.QUEUED)
                self.runs.book.apply(job.job_id, step)
                self.runs.poke()
                return
        placement = self._place(job, spec, plan)
        if isinstance(placement, str):
            if self._waiting.get(job.job_id) != placement:
                self._waiting[job.job_id] = placement
                self.runs.store.update_job(job.job_id, self.runs.wall(), reason=placement)
                self.runs.event(job.job_id, "waiting", placement)
            return
        self._waiting.pop(job.job_id, None)
        self._launch(job, spec, stage, label, plan, placement, now)

    def _place(self, job: JobRecord, spec: JobSpec, plan: Plan) -> Placement | str:
        if not self.runs.executor.places_gpus:
            return Placement((), ())  # the executor's scheduler (Slurm) chooses the GPUs
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
        for live in self.runs.live.values():
            for uuid in live.gpu_uuids:
                held.setdefault(uuid, set()).add(live.job_id)
        found = place(request, self.runs.gpu, held, self.ledger.mkd_pids(), self.runs.config.gpu.busy_memory)
        if isinstance(found, str):
            return found
        return self._memory_freed(job, spec, found)

    def _memory_freed(self, job: JobRecord, spec: JobSpec, placement: Placement) -> Placement | str:
        """Before a retry on the same GPUs, wait (bounded) until the dead attempt's own GPU processes are gone.

        Only its processes count: another user's process on a shared GPU is not going away, and
        waiting for it cost every retry the whole bound. A pid gone from /proc holds no GPU memory,
        even if the last NVML reading (up to `sample_every` old) still lists it.
        """
        last_end = job.memory.stage.last_end_wall
        last_gpus = set(job.memory.stage.last_gpus)
        dead = set(job.memory.stage.last_gpu_pids)
        if not last_end or self.runs.wall() - last_end > spec.watch.gpu_memory_free_wait.total_seconds():
            return placement
        for gpu in self.runs.gpu.gpus:
            if gpu.uuid in last_gpus and gpu.uuid in placement.uuids:
                left = [p for p in gpu.processes if p.pid in dead and read_stat(p.pid) is not None]
                held_bytes = sum(p.used_bytes or 0 for p in left)
                if left and held_bytes > self.runs.config.gpu.memory_freed_below:
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
        """prepare -> record the attempt -> executor.launch -> live; the job is running."""
        number = len(self.runs.store.attempts(job.job_id)) + 1
        attempt_dir = self.runs.job_dir(job.job_id) / "attempts" / f"{number:02d}-{label}"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        try:
            plan = self._final_plan(spec, stage, plan, placement, attempt_dir)
        except (ValueError, OSError) as error:
            self.runs.set_state(job, JobState.FAILED, f"agent overrides: {error}")
            return
        launch = self._prepare(job, spec, stage, label, plan, attempt_dir)
        attempt = self.runs.store.add_attempt(
            job_id=job.job_id,
            stage_index=job.stage_index,
            stage_label=label,
            params=plan,
            dir=str(attempt_dir),
            now=self.runs.wall(),
        )
        handle = self.runs.executor.launch(replace(launch, attempt_number=attempt.number))
        self.runs.store.update_attempt(
            attempt.id, shim_pid=handle.pid, shim_start=handle.start_ticks, run_ref=handle.to_json()
        )
        self.runs.live[attempt.id] = LiveAttempt(
            attempt_id=attempt.id,
            job_id=job.job_id,
            dir=attempt_dir,
            console=launch.spec.console,
            handle=handle,
            started_mono=now,
            gpu_indices=placement.indices,
            gpu_uuids=placement.uuids,
            timeout_seconds=stage_timeout(stage),
            stage_kind=stage.kind,
        )
        chosen = f"{plan.gpus} GPU(s) the {self.runs.executor.kind} scheduler chooses" if plan.gpus else "no GPU"
        devices = ",".join(f"GPU{i}" for i in placement.indices) or chosen
        where = f"num_envs={plan.num_envs} on {devices}" if plan.num_envs else f"on {devices}"
        reason = f"attempt {attempt.number} ({label}) started, {where}"
        self.runs.set_state(job, JobState.RUNNING, reason, plan=plan, next_attempt_at=None)

    def _final_plan(self, spec: JobSpec, stage: Stage, plan: Plan, placement: Placement, attempt_dir: Path) -> Plan:
        """What only launch time knows: a free master port, a probe's sample budget, the GPUs, the agent YAML."""
        if plan.processes > 1 and not plan.master_port:
            plan = replace(plan, master_port=self._free_port())
        if stage.kind == "probe" and not plan.max_samples:
            plan = replace(plan, max_samples=probe_samples(plan))
        plan = replace(plan, gpu_indices=placement.indices, gpu_uuids=placement.uuids)
        return self._derive_agent_config(spec, plan, attempt_dir)

    def _prepare(
        self, job: JobRecord, spec: JobSpec, stage: Stage, label: str, plan: Plan, attempt_dir: Path
    ) -> LaunchRequest:
        """The exact command (kept in command.json) and what the executor needs to run it."""
        command = build_command(
            config=self.runs.config,
            layout=self.runs.layout,
            spec=spec,
            stage=stage,
            plan=plan,
            gpu_indices=list(plan.gpu_indices) or self._logical_gpus(plan),
            attempt_dir=attempt_dir,
        )
        atomic_write_json(
            attempt_dir / "command.json",
            {"argv": command.argv, "cwd": command.cwd, "env": command.env, "nccl": command.nccl_applied},
            mode=0o600,  # holds the run's whole environment
        )
        config = self.runs.config
        return LaunchRequest(
            job_id=job.job_id,
            attempt_number=0,  # set once the store numbered the attempt
            stage_label=label,
            attempt_dir=attempt_dir,
            spec=LaunchSpec(
                argv=command.argv,
                env=command.env,
                cwd=command.cwd,
                console=attempt_dir / "console.log",
                grace_seconds=spec.watch.stop_grace.total_seconds(),
                log_max_bytes=config.console_log_max,
                log_backups=config.console_log_backups,
            ),
            gpu_count=plan.gpus,
            gpu_indices=plan.gpu_indices,
        )

    def _logical_gpus(self, plan: Plan) -> list[int]:
        """Where an outside scheduler places GPUs: cuda:0..n-1 of what it will give (the run inherits its
        CUDA_VISIBLE_DEVICES on the node); with mkd's own placement, none beyond the placement's."""
        return [] if self.runs.executor.places_gpus else list(range(plan.gpus))

    def _derive_agent_config(self, spec: JobSpec, plan: Plan, attempt_dir: Path) -> Plan:
        overrides = plan.agent_overrides
        workload = spec.workload
        if not overrides or not isinstance(workload, MimicKitWorkload):
            return plan
        mimickit_dir = Path(workload.mimickit_dir or self.runs.layout.mimickit_dir)
        derived = write_derived_agent_config(workload, overrides, mimickit_dir, attempt_dir / "agent_config.yaml")
        return replace(plan, agent_config=str(derived))

    def _free_port(self) -> int:
        taken = {a.params.master_port or 0 for a in self.runs.store.attempts(live_only=True)}
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in taken:
                return port


def _env() -> dict[str, str]:
    return dict(os.environ)
