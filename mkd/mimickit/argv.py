"""MimicKit's command line: the arguments of mimickit/run.py an attempt runs with."""

from __future__ import annotations

from pathlib import Path

from mkd.memory import Plan
from mkd.spec import MimicKitWorkload
from mkd.stagekinds import EVALUATING


def logical_devices(workload: MimicKitWorkload, plan: Plan, gpu_indices: list[int]) -> list[str]:
    """What to pass as --devices: cuda:0..n-1 inside CUDA_VISIBLE_DEVICES, or the CPU list."""
    if gpu_indices:
        return [f"cuda:{i}" for i in range(len(gpu_indices))]
    wanted = workload.devices or ["cpu"]
    count = plan.processes
    return [d for d in wanted if d == "cpu"][:count] or ["cpu"]


def mimickit_argv(
    python: str,
    workload: MimicKitWorkload,
    stage_kind: str,
    plan: Plan,
    gpu_indices: list[int],
    out_dir: Path,
) -> list[str]:
    """MimicKit's run.py command line for one attempt (mimickit.md section 1: its arguments)."""
    args: list[str] = [python, "mimickit/run.py"]

    def add(key: str, *values: object) -> None:
        if values and all(v is not None for v in values):
            args.extend([f"--{key}", *(str(v) for v in values)])

    add("arg_file", workload.arg_file)
    add("engine_config", workload.engine_config)
    add("env_config", workload.env_config)
    add("agent_config", plan.agent_config or workload.agent_config)
    is_test = stage_kind in EVALUATING
    add("mode", "test" if is_test else "train")
    add("visualize", "true" if stage_kind == "visualize" else "false")
    devices = logical_devices(workload, plan, gpu_indices)
    add("devices", *devices)
    add("num_envs", plan.num_envs)
    if is_test:
        add("test_episodes", plan.test_episodes)
    else:
        add("max_samples", plan.max_samples)
        add("logger", workload.logger)
        if workload.save_int_models is not None:
            add("save_int_models", "true" if workload.save_int_models else "false")
    add("model_file", plan.model_file)
    add("rand_seed", workload.rand_seed)
    if len(devices) > 1:
        add("master_port", plan.master_port)
    add("out_dir", str(out_dir))
    return args
