"""The book: a lifecycle step written to the store in one transaction, so a daemon killed
half-way finds either the step or nothing (never a job moved on without its memory)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from mkd.fsutil import atomic_write
from mkd.lifecycle import Step
from mkd.stages import sweep_tsv
from mkd.store import Store

log = logging.getLogger("mkd.book")


class Book:
    def __init__(self, store: Store, wall: Callable[[], float], runs_dir: Path) -> None:
        self.store = store
        self.wall = wall
        self.runs_dir = runs_dir

    def apply(self, job_id: str, step: Step, *, stage_label: str | None = None) -> None:
        """Record the step: memory, plan and stage first, then the state change that publishes it."""
        if step.sweep_rows is not None and stage_label is not None:  # before the store: rewritten if judged again
            folder = self.runs_dir / job_id
            text = sweep_tsv(step.sweep_rows)
            atomic_write(folder / f"summary-{stage_label}.tsv", text)
            atomic_write(folder / "summary.tsv", text)
        now = self.wall()
        with self.store.batch():
            for kind, message in step.events:
                self.event(job_id, kind, message)
            fields: dict[str, object] = {"memory": step.memory}
            if step.stage_index is not None:
                fields["stage_index"] = step.stage_index
            self.store.update_job(job_id, now, **fields)
            if step.retry:
                self.store.bump("retries_total")
            state_fields: dict[str, object] = {
                "next_attempt_at": now + step.delay_seconds if step.delay_seconds is not None else now
            }
            if step.plan is not None:
                state_fields["plan"] = step.plan
            self.store.set_job_state(job_id, step.state, step.reason, now, **state_fields)
        log.info("job %s: %s (%s)", job_id, step.state, step.reason)

    def event(self, job_id: str, kind: str, message: str, data: dict[str, object] | None = None) -> None:
        self.store.add_event(job_id, self.wall(), kind, message, data)
        log.info("job %s: %s", job_id, message)
