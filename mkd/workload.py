"""From a job, a stage and the attempt's parameters to the exact argv, environment and cwd.

The "plan" is the dict of parameters one attempt runs with (num_envs, gpus, nccl preset,
Mesa overrides, resume model...). The policy changes one of them per retry; this module
turns a plan into a command and knows MimicKit's argument names, nothing else.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkd.config import DaemonConfig, Layout
from mkd.spec import CommandWorkload, JobSpec, MimicKitWorkload, Stage

MESA_OVERRIDES = {"MESA_GL_VERSION_OVERRIDE": "3.3", "MESA_GLSL_VERSION_OVERRIDE": "330"}
VISUALIZE_TIMEOUT_SECONDS = 180.0
TRAIN_KINDS = ("train", "warmup", "long_run", "probe", "sweep")


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    out_dir: Path | None
    nccl_applied: dict[str, str]


def base_env(config: DaemonConfig) -> dict[str, str]:
    """The daemon's environment plus what every MimicKit child needs (mimickit.md section 0)."""
    env = dict(os.environ)
    for key in (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "INVOCATION_ID",
    ):
        env.pop(key, None)
    env.update(config.base_env)
    env["PYTHONUNBUFFERED"] = "1"  # otherwise ~8 KB of console lags and is lost at a kill
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's and CUDA's indices agree
    return env


def build_command(
    *,
    config: DaemonConfig,
    layout: Layout,
    spec: JobSpec,
    stage: Stage,
    plan: dict[str, Any],
    gpu_indices: list[int],
    attempt_dir: Path,
) -> Command:
    env = base_env(config)
    nccl: dict[str, str] = {}
    preset = plan.get("nccl_preset")
    if preset:
        nccl.update(config.nccl_presets.get(str(preset), {}))
    nccl.update(spec.nccl.env)
    env.update(nccl)
    env.update(spec.env)
    if plan.get("mesa"):
        env.update(MESA_OVERRIDES)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices) if gpu_indices else ""
    if not gpu_indices:
        env.pop("CUDA_VISIBLE_DEVICES")
    workload = spec.workload
    if isinstance(workload, CommandWorkload):
        return Command(list(workload.argv), env, workload.cwd, None, nccl)
    out_dir = attempt_dir / "out"
    argv = mimickit_argv(config, workload, stage, plan, gpu_indices, out_dir)
    if stage.kind == "visualize" and not env.get("DISPLAY") and shutil.which("xvfb-run"):
        argv = ["xvfb-run", "-a", *argv]
    cwd = workload.mimickit_dir or str(layout.mimickit_dir)
    return Command(argv, env, cwd, out_dir, nccl)


def logical_devices(workload: MimicKitWorkload, plan: dict[str, Any], gpu_indices: list[int]) -> list[str]:
    """What to pass as --devices: cuda:0..n-1 inside CUDA_VISIBLE_DEVICES, or the CPU list."""
    if gpu_indices:
        return [f"cuda:{i}" for i in range(len(gpu_indices))]
    wanted = workload.devices or ["cpu"]
    count = int(plan.get("processes", len(wanted)))
    return [d for d in wanted if d == "cpu"][:count] or ["cpu"]


def mimickit_argv(
    config: DaemonConfig,
    workload: MimicKitWorkload,
    stage: Stage,
    plan: dict[str, Any],
    gpu_indices: list[int],
    out_dir: Path,
) -> list[str]:
    python = workload.python or config.mimickit_python
    args: list[str] = [python, "mimickit/run.py"]

    def add(key: str, *values: object) -> None:
        if values and all(v is not None for v in values):
            args.extend([f"--{key}", *(str(v) for v in values)])

    add("arg_file", workload.arg_file)
    add("engine_config", workload.engine_config)
    add("env_config", workload.env_config)
    add("agent_config", plan.get("agent_config") or workload.agent_config)
    is_test = stage.kind in ("test", "visualize")
    add("mode", "test" if is_test else "train")
    add("visualize", "true" if stage.kind == "visualize" else "false")
    devices = logical_devices(workload, plan, gpu_indices)
    add("devices", *devices)
    add("num_envs", plan.get("num_envs"))
    if is_test:
        add("test_episodes", plan.get("test_episodes"))
    else:
        add("max_samples", plan.get("max_samples"))
        add("logger", workload.logger)
        if workload.save_int_models is not None:
            add("save_int_models", "true" if workload.save_int_models else "false")
    add("model_file", plan.get("model_file"))
    add("rand_seed", workload.rand_seed)
    if len(devices) > 1:
        add("master_port", plan.get("master_port"))
    add("out_dir", str(out_dir))
    return args


def write_derived_agent_config(
    workload: MimicKitWorkload, overrides: dict[str, Any], mimickit_dir: Path, dest: Path
) -> Path:
    """The agent YAML with the job's overrides, checked against the base file's keys."""
    from mkd.mimickit.agent_overrides import apply_overrides

    if workload.agent_config is None:
        raise ValueError("agent_overrides need workload.agent_config (the base YAML to override)")
    base = Path(workload.agent_config)
    if not base.is_absolute():
        base = mimickit_dir / base
    return apply_overrides(base, overrides, dest)


def stage_timeout(stage: Stage) -> float | None:
    if stage.timeout is not None:
        return stage.timeout.total_seconds()
    if stage.kind == "visualize":
        return VISUALIZE_TIMEOUT_SECONDS
    return None


def display_available(env: dict[str, str]) -> tuple[bool, str]:
    """Whether a visualize stage can open a window: a DISPLAY, or xvfb-run to make one."""
    if env.get("DISPLAY"):
        return True, f"DISPLAY={env['DISPLAY']}"
    if shutil.which("xvfb-run"):
        return True, "no DISPLAY; running under xvfb-run"
    return False, "no DISPLAY and no virtual display (install xvfb for xvfb-run)"
