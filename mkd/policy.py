"""The retry policy: what to do after an attempt ends, as data plus one pure function.

`decide` is called for "the attempt exited" and "the attempt was found lost on restore"
alike. It follows the runbook's fallback ladder and changes one thing per retry: apply
the NCCL preset, step num_envs down the ladder, fall back to one device, take a new
master port, add the Mesa overrides, or simply run again (resuming a long run).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from mkd.memory import Plan
from mkd.spec import ClassAction, Retry
from mkd.stagekinds import EVALUATING

DEFAULT_LADDER_FLOOR = 64

# The runbook's fallback ladder per failure class: the steps tried in order, the first
# one that still changes something is taken. A class that maps to ("give_up",) is
# permanent: retrying cannot fix it.
DEFAULT_STEPS: dict[str, tuple[ClassAction, ...]] = {
    "startup_multi_device": ("nccl_preset", "step_down", "single_device"),  # class A
    "cuda_oom": ("step_down", "single_device"),
    "nccl_abort_hang": ("step_down", "single_device"),  # class D
    "warmup_outputs_missing": ("step_down",),  # class B
    "long_run_exited": ("step_down", "single_device"),  # class C, resumed from model.pt
    "port_in_use": ("new_port",),
    "visualize_gl": ("mesa",),
    "stall": ("retry",),
    "timeout": ("retry",),
    "killed": ("retry",),
    "peer_lost": ("retry",),  # kill the whole group, run again
    "lost": ("retry",),
    # Slurm-level ends (mkd.executors.slurm): a new job; a long run resumes from its last model.pt
    "slurm_node_fail": ("retry",),
    "slurm_preempted": ("retry",),
    "slurm_timeout": ("retry",),
    "slurm_oom": ("step_down",),  # host memory grows with num_envs
    "slurm_submit_refused": ("retry",),  # a controller away for a restart; a bad partition ends at max_attempts
    "unknown": ("retry",),
    "nan_divergence": ("give_up",),
    "env_mismatch": ("give_up",),
    "config_error": ("give_up",),
    "mkd_error": ("give_up",),
    "paused": ("give_up",),  # never reaches the policy: the lifecycle holds a paused job
}


@dataclass(frozen=True)
class Observation:
    """What the daemon learned about an ended attempt."""

    stage_kind: str
    failure: str | None  # a FailureClass value; None when the attempt passed
    permanent: bool = False
    gpus: int = 0
    processes: int = 1
    had_progress: bool = False
    foreign_memory: bool = False  # other processes hold memory on the attempt's GPUs


@dataclass(frozen=True)
class Decision:
    action: Literal["pass", "retry", "fail"]
    reason: str
    changes: dict[str, Any] = field(default_factory=dict)  # Plan fields to change (mkd.memory.Plan)
    delay_seconds: float = 0.0
    resume: bool = False  # continue from the last model.pt with the remaining samples


def next_rung(ladder: list[int], current: int | None) -> int | None:
    """The next num_envs down: the job's ladder, or halving down to a floor of 64."""
    if current is None:
        return ladder[0] if ladder else None
    lower = [n for n in ladder if n < current]
    if ladder:
        return lower[0] if lower else None
    halved = current // 2
    return halved if halved >= DEFAULT_LADDER_FLOOR else None


def _step(
    step: str, plan: Plan, obs: Observation, retry: Retry, nccl_preset: str | None
) -> tuple[dict[str, Any], str] | None:
    """The change a step makes to `plan`, or None when it has nothing left to change."""
    multi = obs.gpus > 1 or obs.processes > 1
    if step == "nccl_preset":
        if nccl_preset and multi and not plan.nccl_preset:
            return {"nccl_preset": nccl_preset}, f"apply the NCCL preset {nccl_preset!r}"
        return None
    if step == "step_down":
        rung = next_rung(retry.ladder, plan.num_envs)
        if rung is None:
            return None
        return {"num_envs": rung}, f"step num_envs down from {plan.num_envs} to {rung}"
    if step == "single_device":
        if retry.single_device_fallback and multi:
            return {"gpus": min(obs.gpus, 1), "processes": 1}, "fall back to a single device"
        return None
    if step == "new_port":
        return {"master_port": None}, "take a new master port"
    if step == "mesa":
        if plan.mesa:
            return None
        return {"mesa": True}, "retry with MESA_GL_VERSION_OVERRIDE=3.3 MESA_GLSL_VERSION_OVERRIDE=330"
    if step in ("retry", "resume"):
        return {}, "run again unchanged"
    return None


def backoff(retry: Retry, attempt_in_stage: int, rng: random.Random) -> float:
    base = retry.backoff.total_seconds() * 2 ** max(0, attempt_in_stage - 1)
    capped = min(base, retry.backoff_max.total_seconds())
    return float(capped * rng.uniform(0.9, 1.1))


def _stop_reason(
    obs: Observation,
    failure: str,
    steps: tuple[str, ...],
    override: str | None,
    retry: Retry,
    attempts_in_stage: int,
    no_progress_streak: int,
) -> str | None:
    """Why no retry is worth it, if none is: permanent, exhausted, a crash loop, a hang that repeats."""
    if steps == ("give_up",):
        return f"{failure}: retrying cannot fix this"
    if attempts_in_stage >= retry.max_attempts:
        return f"{failure}: retries exhausted ({attempts_in_stage} of {retry.max_attempts} attempts)"
    if no_progress_streak >= retry.max_no_progress:
        return f"{failure}: {no_progress_streak} attempts in a row without progress (crash-loop breaker)"
    if obs.stage_kind in EVALUATING and failure in ("stall", "timeout") and override is None:
        # MimicKit's test mode runs until test_episodes are done: a hang there repeats, unchanged
        return f"{failure}: a {obs.stage_kind} stage that hung would hang again unchanged"
    return None


def decide(
    obs: Observation,
    plan: Plan,
    retry: Retry,
    *,
    attempts_in_stage: int,
    no_progress_streak: int,
    rng: random.Random,
) -> Decision:
    if obs.failure is None:
        return Decision("pass", "pass conditions met")
    failure = obs.failure
    override = retry.on.get(failure)
    steps: tuple[str, ...] = (override,) if override else DEFAULT_STEPS.get(failure, ("retry",))
    if obs.permanent and override is None:
        steps = ("give_up",)
    stop = _stop_reason(obs, failure, steps, override, retry, attempts_in_stage, no_progress_streak)
    if stop is not None:
        return Decision("fail", stop)
    if failure == "cuda_oom" and obs.foreign_memory and override is None:
        return Decision(
            "retry",
            "cuda_oom while other processes hold memory on the GPU: retry unchanged once it is free",
            delay_seconds=backoff(retry, attempts_in_stage, rng),
        )
    for step in steps:
        found = _step(step, plan, obs, retry, retry.apply_nccl_preset_on_failure)
        if found is not None:
            changes, what = found
            resume = obs.stage_kind == "long_run" and obs.had_progress
            return Decision(
                "retry",
                f"{failure}: {what}",
                changes=changes,
                delay_seconds=backoff(retry, attempts_in_stage, rng),
                resume=resume,
            )
    return Decision("fail", f"{failure}: the fallback ladder is spent ({' -> '.join(steps)})")
