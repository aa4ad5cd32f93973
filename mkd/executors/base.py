"""The executor interface: launch, observe, stop, re-adopt after a restart, and which GPUs a run got.

The daemon owns decisions; an executor only runs processes somewhere and reports what
happened to them. Everything an executor needs to find a run again after a daemon restart
is in its `RunRef`, which the store keeps with the attempt, and in the attempt's folder
(exit.json, child.json), which the shim writes wherever the run is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from mkd.engine import LaunchSpec
from mkd.exits import ExitRecord


@dataclass(frozen=True)
class LaunchRequest:
    """One attempt to run: the shim's launch spec plus what a cluster scheduler needs to place it."""

    job_id: str
    attempt_number: int
    stage_label: str
    attempt_dir: Path
    spec: LaunchSpec
    gpu_count: int
    gpu_indices: tuple[int, ...] = ()  # mkd's own placement; an executor that places GPUs ignores it


@dataclass(frozen=True)
class RunRef:
    """What the store records to find a run again: a local shim's pid, or a Slurm job id."""

    kind: str = "local"
    pid: int | None = None  # local: the shim
    start_ticks: int | None = None  # local: the shim's start time, so a reused pid is not mistaken for it
    slurm_job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> RunRef | None:
        if not isinstance(data, dict):
            return None
        return cls(
            kind=str(data.get("kind", "local")),
            pid=_opt_int(data.get("pid")),
            start_ticks=_opt_int(data.get("start_ticks")),
            slurm_job_id=None if data.get("slurm_job_id") is None else str(data["slurm_job_id"]),
        )


@dataclass(frozen=True)
class RunStatus:
    """A run as its executor sees it now."""

    exit: ExitRecord | None = None  # set once it ended (lost=True when nobody recorded how)
    pending_reason: str | None = None  # queued by an outside scheduler, e.g. "Slurm says Resources"
    granted_gpus: tuple[str, ...] | None = None  # GPUs an outside scheduler gave it (SLURM_JOB_GPUS)
    node: str | None = None  # where it runs, when that is not this host

    @property
    def ended(self) -> bool:
        return self.exit is not None


class Executor(Protocol):
    """Runs attempts. Knows nothing about jobs, stages, retries or MimicKit."""

    kind: str
    places_gpus: bool  # True: mkd's scheduler picks GPUs from NVML; False: the executor's scheduler does

    def launch(self, request: LaunchRequest) -> RunRef: ...

    def poll(self, ref: RunRef, attempt_dir: Path) -> RunStatus: ...

    def stop(self, ref: RunRef, attempt_dir: Path, *, kill_now: bool = False) -> None:
        """First call: SIGTERM to the run (SIGKILL after its grace); kill_now or a second call: SIGKILL."""

    def adopt(self, ref: RunRef | None, attempt_dir: Path) -> RunRef | None:
        """After a daemon restart: the run recorded (or, killed before it was recorded, found) for this attempt."""

    def process_group(self, attempt_dir: Path) -> int | None:
        """The run's process group on this host (GPU memory attribution), or None when it runs elsewhere."""

    def kill_leftovers(self, ref: RunRef, attempt_dir: Path) -> int:
        """After a run was lost: kill whatever is left of it; returns how many processes."""

    def tick(self) -> None:
        """Once per daemon tick, before any poll: reap children, refresh a cluster's queue."""

    def close(self) -> None:
        """The daemon exits: forget the runs, which keep going and are re-adopted by the next daemon."""


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
