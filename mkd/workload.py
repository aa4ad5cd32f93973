"""From a job, a stage and the attempt's parameters to the exact argv, environment and cwd.

The plan (mkd.memory.Plan) is what one attempt runs with (num_envs, gpus, nccl preset, Mesa
overrides, resume model...). The policy changes one of it per retry; this module turns a
plan into an environment and a command; MimicKit's argument names are mkd.mimickit.argv's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mkd.config import DaemonConfig, Layout
from mkd.memory import Overrides, Plan
from mkd.mimickit.argv import mimickit_argv
from mkd.spec import CommandWorkload, JobSpec, MimicKitWorkload, Stage

MESA_OVERRIDES = {"MESA_GL_VERSION_OVERRIDE": "3.3", "MESA_GLSL_VERSION_OVERRIDE": "330"}
VISUALIZE_TIMEOUT_SECONDS = 180.0


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
    plan: Plan,
    gpu_indices: list[int],
    attempt_dir: Path,
) -> Command:
    env = base_env(config)
    nccl: dict[str, str] = {}
    if plan.nccl_preset:
        nccl.update(config.nccl_presets.get(plan.nccl_preset, {}))
    nccl.update(spec.nccl.env)
    env.update(nccl)
    env.update(spec.env)
    if plan.mesa:
        env.update(MESA_OVERRIDES)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices) if gpu_indices else ""
    if not gpu_indices:
        env.pop("CUDA_VISIBLE_DEVICES")
    workload = spec.workload
    if isinstance(workload, CommandWorkload):
        return Command(list(workload.argv), env, workload.cwd, None, nccl)
    out_dir = attempt_dir / "out"
    python = workload.python or config.mimickit_python
    argv = mimickit_argv(python, workload, stage.kind, plan, gpu_indices, out_dir)
    if stage.kind == "visualize" and not env.get("DISPLAY") and shutil.which("xvfb-run"):
        argv = ["xvfb-run", "-a", *argv]
    cwd = workload.mimickit_dir or str(layout.mimickit_dir)
    return Command(argv, env, cwd, out_dir, nccl)


def write_derived_agent_config(
    workload: MimicKitWorkload, overrides: Overrides, mimickit_dir: Path, dest: Path
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
