"""The read-only view the daemon publishes at the end of each tick.

Metrics, ``mkd status`` and status.json render from a DaemonView and nothing
else; they keep no state of their own.  The daemon builds a new view each
tick and swaps it in whole, so a reader (the metrics thread) never sees half
a tick.  States are plain strings: the daemon owns the enum.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mkd.gpus import GpuReading
from mkd.states import JobState

# Every job state, in lifecycle order (the store's own enum); mkd_jobs reports each one, even at 0.
JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
ACTIVE_STATES = frozenset({JobState.RUNNING.value})

# Where the daemon catches an error so one job cannot stop the loop (mkd_internal_errors_total{step}).
# The store counts them as "internal_errors_total.<step>".
INTERNAL_ERROR_STEPS: tuple[str, ...] = ("observe", "judge", "start", "files")
INTERNAL_ERRORS_PREFIX = "internal_errors_total."

# Tick durations, in seconds: a healthy tick takes milliseconds; the watchdog cares about seconds.
TICK_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative bucket counts (one per upper bound, +Inf last), their sum and count, at one moment."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # len(bounds) + 1: the last is the count (+Inf)
    total: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


class Histogram:
    """A latency histogram the daemon loop observes into and the view carries a snapshot of.

    Metrics keep no state of their own (they render the view), so the loop, which sees every
    tick, keeps the counts; the view, built once a second, takes an immutable snapshot."""

    def __init__(self, bounds: tuple[float, ...] = TICK_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self._total = 0.0

    def observe(self, seconds: float) -> None:
        if math.isnan(seconds):
            return
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self._total += seconds

    def snapshot(self) -> HistogramSnapshot:
        cumulative, running = [], 0
        for n in self._counts:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, tuple(cumulative), self._total)


@dataclass(frozen=True)
class JobView:
    job_id: str
    state: str
    stage: str | None = None
    attempt: int = 0
    num_envs: int | None = None
    devices: tuple[str, ...] = ()
    gpu_uuids: tuple[str, ...] = ()
    slurm_job_id: str | None = None  # with [executor] kind = "slurm": the join key to a node's exporter
    node: str | None = None  # where an outside scheduler ran it
    iteration: int | None = None
    samples: int | None = None  # stitched across attempts
    samples_per_second: float | None = None
    train_return: float | None = None
    test_return: float | None = None
    train_episode_length: float | None = None
    test_episode_length: float | None = None
    wall_time_seconds: float | None = None
    losses: Mapping[str, float] = field(default_factory=dict)  # e.g. Critic_Loss, Clip_Frac; may be NaN
    seconds_since_progress: float | None = None
    last_progress_at: float | None = None  # wall time of the last new iteration of the live attempt
    best_test_return: float | None = None
    median_samples_per_second: float | None = None
    retries: int = 0
    finished_at: float | None = None  # wall time; None while the job is not finished
    last_failure: str | None = None
    # The last test stage's result (MimicKit's "Mean Return", "Mean Episode Length", "Episodes").
    test_mean_return: float | None = None
    test_mean_episode_length: float | None = None
    test_episodes: int | None = None

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
    tick_durations: HistogramSnapshot | None = None  # every tick since the daemon started
    internal_errors_by_step: Mapping[str, int] = field(default_factory=dict)
    metrics_error: str | None = None  # why /metrics is not served (the port was taken), None when it is


def internal_errors_by_step(counters: Mapping[str, int]) -> dict[str, int]:
    """The store's "internal_errors_total.<step>" counters, by step; every known step at 0 at least."""
    out = dict.fromkeys(INTERNAL_ERROR_STEPS, 0)
    for name, value in counters.items():
        if name.startswith(INTERNAL_ERRORS_PREFIX):
            out[name[len(INTERNAL_ERRORS_PREFIX) :]] = value
    return out


def with_earlier_results(progress: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
    """A job's figures: the current attempt's, completed from the stages it passed.

    A test or visualize stage prints no iteration table, so while it runs (and once the job is
    finished) the training figures are the last passed training stage's, and the test result
    is the last test stage's.  `results` is the job's stage_data["results"] (label -> result,
    in stage order)."""
    out = dict(progress)
    passed = [r for r in results.values() if isinstance(r, Mapping)]
    if "iteration" not in out:
        trained = next((r for r in reversed(passed) if r.get("iteration") is not None), None)
        if trained is not None:
            for key in ("iteration", "samples", "train_return", "test_return"):
                if trained.get(key) is not None:
                    out.setdefault(key, trained[key])
    if not out.get("test_result"):
        tested = next((r["test_result"] for r in reversed(passed) if r.get("test_result")), None)
        if tested:
            out["test_result"] = tested
    return out
