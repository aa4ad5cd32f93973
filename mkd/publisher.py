"""What people and Prometheus read: the jobs/ mirror, each job's status.json and report.md, and
the DaemonView that metrics, `systemctl status` and status.json are rendered from."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from mkd import report
from mkd.fsutil import atomic_write, atomic_write_json
from mkd.gpu_ledger import GpuLedger
from mkd.gpus import attribute_processes
from mkd.live import LiveAttempt
from mkd.mirror import place_job_file
from mkd.runs import Runs
from mkd.snapshot import DaemonView, JobView, internal_errors_by_step, with_earlier_results
from mkd.stagekinds import TRAINING
from mkd.states import LIVE
from mkd.store import JobRecord, StoreError
from mkd.store_views import attempt_summaries

log = logging.getLogger("mkd.publisher")
STATUS_WRITE_SECONDS = 10.0  # a live job's status.json; report.md at every state change and each minute
REPORT_WRITE_SECONDS = 60.0


class Publisher:
    def __init__(self, runs: Runs, ledger: GpuLedger, forgetters: Sequence[Callable[[set[str]], None]]) -> None:
        self.runs = runs
        self.ledger = ledger
        self.forgetters = forgetters  # per-job caches elsewhere, emptied of jobs no longer shown
        self._status_written: dict[str, float] = {}
        self._report_written: dict[str, float] = {}

    def publish_pending(self) -> None:
        """Write the files people read (jobs/ mirror, status.json, report.md) for jobs whose state changed.

        The store marks a job unpublished in the same transaction as its state change, so a
        daemon killed before writing the files writes them at its next start.
        """
        for job_id in self.runs.store.unpublished():
            job = self.runs.store.get_job(job_id)
            if job is None:
                continue
            try:
                place_job_file(self.runs.layout, job_id, job.state, text=self.runs.store.source_text(job_id))
                self.write_status(job_id)
            except OSError as error:  # a mirror is not the truth: log, count, try again next tick
                log.error("job %s: cannot write its files: %s", job_id, error)
                self.runs.store.bump("intake_errors_total")
                return
            except Exception:  # one job's files must not stop the loop (nor loop on the error)
                log.exception("job %s: error while writing its files", job_id)
                self.runs.store.bump("internal_errors_total.files")
            self.runs.store.mark_published(job_id)

    def refresh(self, now: float) -> None:
        """A live job's status.json every 10 s (report.md each minute), between its state changes."""
        for job_id in list(self._status_written):
            if now - self._status_written[job_id] >= STATUS_WRITE_SECONDS and self.runs.live_for(job_id):
                try:
                    self.write_status(job_id, periodic=True)
                except OSError as error:
                    log.error("job %s: cannot write status.json: %s", job_id, error)

    def write_status(self, job_id: str, *, periodic: bool = False) -> None:
        """runs/<job>/status.json and report.md, the people's view of one job.

        A state change writes both, durably. The periodic refresh of a live job (status.json every
        10 s, report.md every minute) skips fsync: the files are rebuilt from the store, and 20
        runs' renders and fsyncs every few seconds were a good part of the daemon's CPU.
        """
        job = self.runs.store.get_job(job_id)
        if job is None:
            return
        clock = self.runs.clock()
        self._status_written[job_id] = clock
        report_due = not periodic or clock - self._report_written.get(job_id, -1e9) >= REPORT_WRITE_SECONDS
        if job.state.finished:
            self._status_written.pop(job_id, None)
            self._report_written.pop(job_id, None)
        elif report_due:
            self._report_written[job_id] = clock
        folder = self.runs.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        attempts = self.runs.store.attempts(job_id)
        live = self.runs.live_for(job_id)
        status = report.status_dict(
            job, self.runs.spec(job), attempts, live.progress() if live else None, self.runs.wall()
        )
        atomic_write_json(folder / "status.json", status, durable=not periodic)
        if report_due:
            text = report.render_report(job, self.runs.spec(job), attempts, self.runs.store.events(job_id))
            atomic_write(folder / "report.md", text, durable=not periodic)

    def view(self, now: float, started_at: float, tick_seconds: float) -> DaemonView:
        jobs: list[JobView] = []
        retention = self.runs.config.metrics.retention.total_seconds()
        wall = self.runs.wall()
        shown = self.runs.store.jobs(set(LIVE)) + self._recently_finished(wall - retention)
        summaries = attempt_summaries(self.runs.store, [j.job_id for j in shown])
        self._forget_all_but({j.job_id for j in shown})
        for job in shown:
            try:
                jobs.append(self._job_view(job, now, summaries.get(job.job_id, {})))
            except StoreError:
                raise
            except Exception:  # one job mkd cannot show (a spec it cannot read) must not blank the others
                log.debug("job %s: shown by its state only", job.job_id, exc_info=True)
                jobs.append(JobView(job_id=job.job_id, state=job.state.value, finished_at=job.finished_at))
        counters = self.runs.store.counters()
        by_state = self.runs.store.count_by_state()
        owners = self.ledger.gpu_owners()
        return DaemonView(
            started_at=started_at,
            jobs=tuple(jobs),
            jobs_by_state=by_state,
            attempts_total=counters.get("attempts_total", 0),
            failures_by_class=self.runs.store.failures_by_class(),
            retries_total=counters.get("retries_total", 0),
            queue_length=by_state.get("queued", 0) + by_state.get("retry_wait", 0),
            rejected_files_total=counters.get("rejected_files_total", 0),
            intake_errors_total=counters.get("intake_errors_total", 0),
            gpu=self.runs.gpu,
            gpu_holders=self.ledger.holders(),
            gpu_process_bytes=attribute_processes(self.runs.gpu, owners),
            tick_seconds=tick_seconds,
            internal_errors_by_step=internal_errors_by_step(counters),
        )

    def _forget_all_but(self, job_ids: set[str]) -> None:
        """Drop per-job caches of jobs no longer shown: a daemon that ran 10,000 jobs keeps none of theirs."""
        for forget in self.forgetters:
            forget(job_ids)

    def _recently_finished(self, since: float) -> list[JobRecord]:
        return [j for j in self.runs.store.jobs_finished_since(since) if j.state.finished]

    def _job_view(self, job: JobRecord, now: float, summary: dict[str, Any]) -> JobView:
        spec = self.runs.spec(job)
        stages = spec.effective_stages
        stage = stages[min(job.stage_index, len(stages) - 1)]
        live = self.runs.live_for(job.job_id)
        finished = job.state.finished
        progress = live.progress() if live else summary.get("progress", {})
        if stage.kind not in TRAINING:  # a test stage prints no table: show the training stage's figures
            results = {label: r.to_json() for label, r in job.memory.results.items()}
            progress = with_earlier_results(progress, results)
        if finished:  # a finished job has no current rate: keep its totals, not its last speed
            progress = {k: v for k, v in progress.items() if "per_second" not in k}
        offset = job.memory.stage.samples_offset
        samples = progress.get("samples")
        test = progress.get("test_result") or {}
        params = summary.get("params", {})
        return JobView(
            job_id=job.job_id,
            state=job.state.value,
            stage=stage.label(job.stage_index),
            attempt=int(summary.get("attempts", 0)),
            num_envs=None if job.plan is None else job.plan.num_envs,
            devices=_devices(live, params),
            gpu_uuids=live.gpu_uuids if live else (),
            slurm_job_id=summary.get("run_ref", {}).get("slurm_job_id"),
            node=params.get("node"),
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
            last_progress_at=None
            if live is None or live.last_progress_mono is None
            else self.runs.wall() - (now - live.last_progress_mono),
            test_mean_return=_opt_float(test.get("mean_return")),
            test_mean_episode_length=_opt_float(test.get("mean_episode_length")),
            test_episodes=_opt_int(test.get("episodes")),
            best_test_return=_opt_float(progress.get("best_test_return")),
            median_samples_per_second=_opt_float(progress.get("median_samples_per_second")),
            retries=int(summary.get("retries", 0)),
            finished_at=job.finished_at,
            last_failure=summary.get("last_failure"),
        )


def _opt_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _devices(live: LiveAttempt | None, params: dict[str, Any]) -> tuple[str, ...]:
    """The GPUs a job's attempt runs on: mkd's placement, or what an outside scheduler (Slurm) granted
    on its node; the live attempt's when there is one, else the last attempt's recorded params."""
    granted = live.granted_gpus if live and live.granted_gpus is not None else params.get("granted_gpus")
    if granted is not None:
        return tuple(f"cuda:{g}" for g in granted)
    gpus = live.gpu_indices if live else params.get("gpu_indices", [])
    return tuple(f"cuda:{i}" for i in gpus)


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
