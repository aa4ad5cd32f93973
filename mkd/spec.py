"""The job file, as pydantic models: what a person may write in `jobs/incoming/NAME.toml`.

Every model is frozen and forbids unknown keys, because MimicKit itself silently ignores a
misspelled argument (`--num_env 8` trains with one env) and mkd exists to catch that.
The models only describe; they never start anything.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mkd import limits
from mkd.bounded import DURATION_TEXT, SIZE_TEXT, duration, many, size, within

# The bounded field types (mkd.limits has the ranges and why).
NumEnvs = Annotated[int, within(limits.NUM_ENVS)]
Samples = Annotated[int, within(limits.MAX_SAMPLES)]
Timeout = Annotated[timedelta, duration(limits.TIMEOUT), DURATION_TEXT]
Backoff = Annotated[timedelta, duration(limits.BACKOFF), DURATION_TEXT]
DeviceList = Annotated[list[str], many(limits.DEVICES)]

JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEVICE = re.compile(r"cpu|cuda:\d{1,2}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Frozen(BaseModel):
    """Base of every spec and config model: immutable, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class JobInfo(Frozen):
    name: str | None = Field(None, description="Job name; defaults to the file name without .toml.")
    priority: Annotated[int, within(limits.PRIORITY)] = Field(
        0, description="Higher runs first; FIFO within a priority."
    )
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not JOB_NAME.fullmatch(value):
            raise ValueError("a job name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value


class MimicKitWorkload(Frozen):
    """MimicKit's `mimickit/run.py` and the arguments mkd passes to it."""

    kind: Literal["mimickit"] = "mimickit"
    mimickit_dir: str | None = Field(None, description="MimicKit checkout; defaults to the daemon's.")
    python: str | None = Field(None, description="Interpreter; defaults to the daemon's `mimickit_python`.")
    arg_file: str | None = None
    engine_config: str | None = None
    env_config: str | None = None
    agent_config: str | None = None
    agent_overrides: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Agent-config keys (dotted for nested) written into a derived YAML.",
    )
    num_envs: NumEnvs | None = None
    devices: DeviceList | None = None
    max_samples: Samples | None = None
    rand_seed: Annotated[int, within(limits.RAND_SEED)] | None = None
    logger: Literal["txt", "tb", "wandb"] | None = None
    save_int_models: bool | None = None
    model_file: str | None = None

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        for device in value:
            if not DEVICE.fullmatch(device):
                raise ValueError(f"device {device!r} is not 'cpu' or 'cuda:N'")
        cuda = [d for d in value if d != "cpu"]
        if len(set(cuda)) != len(cuda):
            raise ValueError("a cuda device is listed twice (only 'cpu' may repeat: one process each)")
        kinds = {d.split(":")[0] for d in value}
        if len(kinds) > 1:
            raise ValueError("mixing 'cpu' and 'cuda' devices mixes gloo and NCCL ranks, which MimicKit cannot do")
        return value


class CommandWorkload(Frozen):
    """Any program, for jobs that are not MimicKit (or need no GPU)."""

    kind: Literal["command"]
    argv: list[str] = Field(min_length=1, description="Program and arguments; never a shell string.")
    cwd: str | None = None


StageKind = Literal["train", "warmup", "long_run", "test", "visualize", "probe", "sweep", "command"]
PassCheck = Literal["exit_zero", "model_pt", "log_txt", "mean_return"]

DEFAULT_PASS: dict[str, tuple[PassCheck, ...]] = {
    "train": ("exit_zero", "model_pt", "log_txt"),
    "warmup": ("exit_zero", "model_pt", "log_txt"),
    "long_run": ("exit_zero", "model_pt", "log_txt"),
    "probe": ("exit_zero", "model_pt", "log_txt"),
    "sweep": ("exit_zero", "log_txt"),
    "test": ("exit_zero", "mean_return"),
    "visualize": ("exit_zero", "mean_return"),
    "command": ("exit_zero",),
}


class SweepPoint(Frozen):
    num_envs: NumEnvs
    agent_overrides: dict[str, str | int | float | bool] = Field(default_factory=dict)


class Stage(Frozen):
    """One step of a job: one MimicKit run (with its retries), or a ladder or sweep of runs."""

    kind: StageKind
    name: str | None = None
    num_envs: NumEnvs | None = None
    max_samples: Samples | None = None
    devices: DeviceList | None = None
    test_episodes: Annotated[int, within(limits.TEST_EPISODES)] | None = None
    model_from: str | None = Field(None, description="Name of an earlier stage whose model.pt to load.")
    timeout: Timeout | None = None
    pass_checks: list[PassCheck] | None = Field(None, alias="pass")
    ladder: Annotated[list[NumEnvs], many(limits.LADDER_RUNGS)] | None = Field(
        None, description="probe: num_envs rungs to try."
    )
    points: Annotated[list[SweepPoint], many(limits.SWEEP_POINTS)] | None = Field(
        None, description="sweep: the points to run."
    )
    point_max_samples: Samples | None = Field(None, description="probe/sweep: samples per probe run.")
    on_fail: Literal["fail_job", "continue"] = "fail_job"
    mesa_overrides: bool = Field(True, description="visualize: retry once with the runbook's Mesa GL overrides.")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not JOB_NAME.fullmatch(value):  # it names the attempt's folder
            raise ValueError("a stage name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _kind_rules(self) -> Self:
        problems: list[str] = []
        if self.kind == "test" and self.test_episodes is None:
            problems.append(
                "a test stage needs test_episodes: MimicKit's test mode without it never ends "
                "(seen: no result after 90 s)"
            )
        if self.kind == "probe" and not self.ladder:
            problems.append("a probe stage needs ladder = [num_envs, ...], e.g. [320, 256, 192, 160, 128, 96, 64]")
        if self.kind != "probe" and self.ladder is not None:
            problems.append("ladder is only for probe stages (the retry ladder is [retry].ladder)")
        if self.kind == "sweep" and not self.points:
            problems.append("a sweep stage needs points = [{num_envs = ...}, ...]")
        if self.kind != "sweep" and self.points is not None:
            problems.append("points is only for sweep stages")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def checks(self) -> tuple[PassCheck, ...]:
        return tuple(self.pass_checks) if self.pass_checks is not None else DEFAULT_PASS[self.kind]

    def label(self, index: int) -> str:
        return self.name or f"{index + 1}-{self.kind}"


class Resources(Frozen):
    gpus: Annotated[int, within(limits.GPUS)] | None = Field(None, description="How many GPUs; 0 for a CPU-only job.")
    devices: Annotated[list[str], many(limits.GPUS)] | None = Field(
        None, description="Named devices, e.g. ['cuda:0', 'cuda:1']."
    )
    share: bool = Field(False, description="May run on a GPU another job holds.")
    min_free_memory: Annotated[int, size(limits.MIN_FREE_MEMORY), SIZE_TEXT] | None = Field(
        None, description='Skip GPUs with less free memory, e.g. "8GiB".'
    )

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if self.gpus is not None and self.devices is not None:
            raise ValueError("give either gpus (a count) or devices (names), not both")
        return self


class Nccl(Frozen):
    preset: str | None = Field(None, description="A preset named in the daemon config, e.g. 'runbook'.")
    env: dict[str, str] = Field(default_factory=dict)


ClassAction = Literal["retry", "nccl_preset", "step_down", "new_port", "single_device", "mesa", "resume", "give_up"]


class Retry(Frozen):
    max_attempts: Annotated[int, within(limits.MAX_ATTEMPTS)] = 4
    backoff: Backoff = timedelta(seconds=5)
    backoff_max: Backoff = timedelta(minutes=5)
    ladder: Annotated[list[NumEnvs], many(limits.RETRY_LADDER_RUNGS)] = Field(
        default_factory=list, description="num_envs to step down through on OOM."
    )
    single_device_fallback: bool = True
    apply_nccl_preset_on_failure: str | None = Field(
        "runbook", description="Preset applied as the first change after a multi-device start-up failure."
    )
    max_no_progress: Annotated[int, within(limits.MAX_NO_PROGRESS)] = Field(
        3, description="Crash-loop breaker: attempts in a row without progress."
    )
    on: dict[str, ClassAction] = Field(default_factory=dict, description="Per failure class action overrides.")

    @field_validator("ladder")
    @classmethod
    def _descending(cls, value: list[int]) -> list[int]:
        if value != sorted(value, reverse=True):
            raise ValueError("the ladder goes down: list num_envs from largest to smallest")
        return value


class Watch(Frozen):
    startup_timeout: Timeout = timedelta(minutes=10)
    stall_timeout: Timeout = timedelta(minutes=5)
    stop_grace: Annotated[timedelta, duration(limits.STOP_GRACE), DURATION_TEXT] = timedelta(seconds=30)
    gpu_report_every: Annotated[timedelta, duration(limits.GPU_REPORT_EVERY), DURATION_TEXT] = timedelta(minutes=1)
    gpu_memory_free_wait: Annotated[timedelta, duration(limits.GPU_MEMORY_FREE_WAIT), DURATION_TEXT] = timedelta(
        seconds=60
    )


class JobSpec(Frozen):
    """The whole job file."""

    job: JobInfo = Field(default_factory=JobInfo)
    workload: MimicKitWorkload | CommandWorkload = Field(discriminator="kind")
    stages: Annotated[list[Stage], many(limits.STAGES)] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    nccl: Nccl = Field(default_factory=Nccl)
    env: dict[str, str] = Field(default_factory=dict)
    retry: Retry = Field(default_factory=Retry)
    watch: Watch = Field(default_factory=Watch)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"{key!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        names = [s.name for s in self.stages if s.name]
        if len(names) != len(set(names)):
            problems.append("two stages have the same name")
        if isinstance(self.workload, CommandWorkload):
            bad = [s.kind for s in self.stages if s.kind != "command"]
            if bad:
                problems.append(f"a command workload only has command stages (found {bad[0]!r})")
        else:
            if any(s.kind == "command" for s in self.stages):
                problems.append("command stages need workload.kind = 'command'")
            for stage in self.stages:
                if stage.model_from is not None and stage.model_from not in names:
                    problems.append(f"model_from = {stage.model_from!r} names no stage (stages: {names})")
            devices = self.workload.devices or []
            if any(d.startswith("cuda") for d in devices) and self.resources.gpus == 0:
                problems.append("workload.devices names cuda devices but resources.gpus = 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def effective_stages(self) -> list[Stage]:
        """The stages to run; a job without any runs one train (or command) stage."""
        if self.stages:
            return list(self.stages)
        kind: StageKind = "command" if isinstance(self.workload, CommandWorkload) else "train"
        return [Stage(kind=kind)]

    def gpu_count(self) -> int:
        """GPUs the job needs, from resources or else from workload.devices."""
        if self.resources.devices is not None:
            return len([d for d in self.resources.devices if d.startswith("cuda")])
        if self.resources.gpus is not None:
            return self.resources.gpus
        if isinstance(self.workload, MimicKitWorkload):
            devices = self.workload.devices or ["cuda:0"]
            return len([d for d in devices if d.startswith("cuda")])
        return 0
