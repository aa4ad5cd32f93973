"""The read-only view the daemon publishes at the end of each tick.

Metrics, ``mkd status`` and status.json render from a DaemonView and nothing
else; they keep no state of their own.  The daemon builds a new view each
tick and swaps it in whole, so a reader (the metrics thread) never sees half
a tick.  States are plain strings: the daemon owns the enum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mkd.gpus import GpuReading

# Every job state, in lifecycle order; mkd_jobs reports each one, even at 0.
JOB_STATES: tuple[str, ...] = (
    "queued",
    "starting",
    "running",
    "retry_wait",
    "succeeded",
    "failed",
    "cancelled",
    "lost",
)
ACTIVE_STATES = frozenset({"starting", "running"})


@dataclass(frozen=True)
class JobView:
    job_id: str
    state: str
    stage: str | None = None
    attempt: int = 0
    num_envs: int | None = None
    devices: tuple[str, ...] = ()
    gpu_uuids: tuple[str, ...] = ()
    iteration: int | None = None
    samples: int | None = None  # stitched across attempts
    samples_per_second: float | None = None
    train_return: float | None = None
    test_return: float | None = None
    train_episode_length: float | None = None
    test_episode_length: float | None = None
    wall_time_seconds: float | None = None
    losses: Mapping[str, float] = field(default_factory=dict)  # e.g. Critic_Loss, Actor_Loss; may be NaN
    seconds_since_progress: float | None = None
    best_test_return: float | None = None
    median_samples_per_second: float | None = None
    retries: int = 0
    finished_at: float | None = None  # wall time; None while the job is not finished
    last_failure: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class DaemonView:
    started_at: float  # wall time
    jobs: tuple[JobView, ...] = ()
    jobs_by_state: Mapping[str, int] = field(default_factory=dict)
    attempts_total: int = 0
    failures_by_class: Mapping[str, int] = field(default_factory=dict)
    retries_total: int = 0
    queue_length: int = 0
    rejected_files_total: int = 0
    intake_errors_total: int = 0
    gpu: GpuReading = field(default_factory=lambda: GpuReading.unavailable("no GPU sample yet", 0.0))
    gpu_holders: Mapping[str, str] = field(default_factory=dict)  # uuid -> job_id
    gpu_process_bytes: Mapping[tuple[str, str], int] = field(  # (uuid, job_id) -> bytes
        default_factory=dict
    )
    tick_seconds: float = 0.0  # how long the last tick took


def count_by_state(jobs: tuple[JobView, ...]) -> dict[str, int]:
    """jobs_by_state for a list of jobs: every known state, 0 where none."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts
