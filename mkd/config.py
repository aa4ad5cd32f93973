"""The daemon's own configuration (`etc/mkd.toml`), validated like a job file.

Relative paths are resolved against a base directory chosen by the caller (the config
file's directory, or the current directory for the embedded defaults), so `mkd run` with
no flags works from a checkout.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from importlib import resources
from typing import Annotated, Literal

from pydantic import Field, model_validator

from mkd import limits
from mkd.bounded import DURATION_TEXT, SIZE_TEXT, duration, size, within
from mkd.layout import Layout as Layout  # where it lives now; imported from here by most modules
from mkd.spec import Frozen, Retry, Watch

Id = Annotated[int, within(limits.ID)]
GpuMemory = Annotated[int, size(limits.GPU_MEMORY), SIZE_TEXT]

RUNBOOK_NCCL = {
    "NCCL_P2P_DISABLE": "1",
    "NCCL_IB_DISABLE": "1",
    "NCCL_CUMEM_ENABLE": "0",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
}


class Paths(Frozen):
    state_dir: str = "var"
    jobs_dir: str = "jobs"
    runs_dir: str = "runs"


class IntakeConfig(Frozen):
    max_file_size: Annotated[int, size(limits.MAX_FILE_SIZE), SIZE_TEXT] = 256 * 1024
    settle: Annotated[timedelta, duration(limits.SETTLE), DURATION_TEXT] = timedelta(seconds=2)
    allowed_uids: list[Id] | None = Field(None, description="Owners allowed to submit; default: mkd's user and root.")
    allowed_gids: list[Id] = Field(default_factory=list, description="Owner groups also allowed to submit.")
    allowed_roots: list[str] = Field(
        default_factory=list, description="Where a job's mimickit_dir / cwd may be; empty: anywhere readable."
    )


class MetricsConfig(Frozen):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, within(limits.PORT)] = 19400  # outside 9100-9999, the exporters' range (dcgm-exporter: 9400)
    retention: Annotated[timedelta, duration(limits.RETENTION), DURATION_TEXT] = timedelta(hours=1)
    hpc_job_mapping_dir: str | None = None


class GpuConfig(Frozen):
    sample_every: Annotated[timedelta, duration(limits.SAMPLE_EVERY), DURATION_TEXT] = timedelta(seconds=5)
    busy_memory: GpuMemory = 2 * 2**30
    memory_freed_below: GpuMemory = 1 * 2**30


class ExecutorConfig(Frozen):
    """Where attempts run: `local` (this host, under the shim) or `slurm` (one batch job per attempt)."""

    kind: Literal["local", "slurm"] = "local"
    partition: str | None = Field(None, description="Slurm partition; required for kind = 'slurm'.")
    account: str | None = None
    qos: str | None = None
    time_limit: Annotated[timedelta, duration(limits.SLURM_TIME_LIMIT), DURATION_TEXT] = Field(
        timedelta(0), description="sbatch --time; 0s: the partition's default."
    )
    sbatch_args: list[str] = Field(default_factory=list, description="More sbatch options, e.g. ['--mem=64G'].")
    gres: str = Field("gpu", description="The GRES name of a GPU: --gres=<gres>:<count>.")

    @model_validator(mode="after")
    def _slurm_needs_partition(self) -> ExecutorConfig:
        if self.kind == "slurm" and not self.partition:
            raise ValueError('[executor] kind = "slurm" needs partition = "<a partition of your cluster>"')
        return self


class DaemonConfig(Frozen):
    paths: Paths = Field(default_factory=Paths)
    mimickit_dir: str = "."
    mimickit_python: str = Field(default_factory=lambda: sys.executable)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # runs are watched at this pace; events wake the loop sooner
    tick: Annotated[timedelta, duration(limits.TICK), DURATION_TEXT] = timedelta(seconds=2)
    max_running: Annotated[int, within(limits.MAX_RUNNING)] = 64
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    nccl_presets: dict[str, dict[str, str]] = Field(default_factory=lambda: {"runbook": dict(RUNBOOK_NCCL)})
    base_env: dict[str, str] = Field(default_factory=dict)
    retry: Retry = Field(default_factory=Retry)
    watch: Watch = Field(default_factory=Watch)
    console_log_max: Annotated[int, size(limits.CONSOLE_LOG_MAX), SIZE_TEXT] = 64 * 2**20
    console_log_backups: Annotated[int, within(limits.CONSOLE_LOG_BACKUPS)] = 3
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @model_validator(mode="after")
    def _preset_names(self) -> DaemonConfig:
        preset = self.retry.apply_nccl_preset_on_failure
        if preset is not None and preset not in self.nccl_presets:
            raise ValueError(f"retry.apply_nccl_preset_on_failure = {preset!r} names no preset in [nccl_presets]")
        return self


def default_config_text() -> str:
    """The embedded defaults, the same file as etc/mkd.toml."""
    return resources.files("mkd").joinpath("defaults/mkd.toml").read_text(encoding="utf-8")
