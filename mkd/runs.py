"""What the daemon's parts share about work in flight: the live attempts, the job specs, the last
GPU reading, the store and the executor. One object, handed to the launcher, the runner, the
GPU ledger and the publisher, so that none of them reaches into another for its state."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkd.book import Book
from mkd.config import DaemonConfig, Layout
from mkd.executors.base import Executor
from mkd.gpus import GpuReading
from mkd.lifecycle import Job
from mkd.live import LiveAttempt
from mkd.spec import JobSpec
from mkd.stages import plan_stage
from mkd.states import JobState
from mkd.store import JobRecord, Store

log = logging.getLogger("mkd.runs")


class Runs:
    def __init__(
        self,
        config: DaemonConfig,
        layout: Layout,
        store: Store,
        executor: Executor,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.layout = layout
        self.store = store
        self.executor = executor
        self.clock = clock
        self.wall = wall
        self.rng = rng
        self.book = Book(store, wall, layout.runs_dir)
        self.live: dict[int, LiveAttempt] = {}  # attempt id -> its live attempt
        self.gpu = GpuReading.unavailable("no GPU sample yet", 0.0)
        self.specs: dict[str, JobSpec] = {}
        self.dirty = True  # something changed: the launcher looks for work at its next step

    def poke(self) -> None:
        """Something changed (a job arrived, an attempt ended, GPUs changed): look for work at once."""
        self.dirty = True

    def forget(self, job_ids: set[str]) -> None:
        for job_id in [k for k in self.specs if k not in job_ids]:
            del self.specs[job_id]

    def spec(self, job: JobRecord) -> JobSpec:
        """The job's spec, its [retry] and [watch] filled in from the daemon's defaults where it is silent."""
        found = self.specs.get(job.job_id)
        if found is None:
            defaults = {
                "retry": self.config.retry.model_dump(mode="json"),
                "watch": self.config.watch.model_dump(mode="json"),
            }
            found = JobSpec.model_validate(deep_merge(defaults, job.spec))
            self.specs[job.job_id] = found
        return found

    def reconfigure(self, config: DaemonConfig) -> None:
        """A reloaded config: later decisions use its defaults and limits."""
        self.config = config
        self.specs.clear()

    def spec_of(self, job_id: str) -> JobSpec:
        found = self.specs.get(job_id)
        if found is not None:
            return found
        job = self.store.get_job(job_id)
        assert job is not None
        return self.spec(job)

    def job_dir(self, job_id: str) -> Path:
        return self.layout.runs_dir / job_id

    def live_for(self, job_id: str) -> LiveAttempt | None:
        return next((a for a in self.live.values() if a.job_id == job_id), None)

    def event(self, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.store.add_event(job_id, self.wall(), kind, message, data)
        log.info("job %s: %s", job_id, message)

    def set_state(self, job: JobRecord, state: JobState, reason: str, **fields: Any) -> None:
        self.store.set_job_state(job.job_id, state, reason, self.wall(), **fields)
        self.poke()
        log.info("job %s: %s (%s)", job.job_id, state, reason)

    def lifecycle_job(self, job: JobRecord, spec: JobSpec) -> Job:
        stage = spec.effective_stages[job.stage_index]
        plan = job.plan if job.plan is not None else plan_stage(spec, stage, job.memory)[0]
        return Job(spec, job.stage_index, plan, job.memory, job.cancel_requested)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, table by table (the job's keys win)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
