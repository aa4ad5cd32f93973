"""The runbook's procedures as stage logic: plans per stage, the probe ladder and the sweep.

Pure functions over a job's typed memory (mkd.memory): what the first attempt of a stage
runs with, and how a probe or sweep point's result moves the stage on.
The probe ladder is a bisection over the sorted rungs, assuming that if num_envs passes
so does every smaller one: a ladder of n rungs costs at most ceil(log2(n + 1)) probes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mkd.memory import JobMemory, Plan, ProbeState, SweepRow, SweepState
from mkd.mimickit.progress import STEPS_PER_ITERATION
from mkd.spec import JobSpec, MimicKitWorkload, Stage
from mkd.stagekinds import EVALUATING

# Failures that say "this scale does not fit" (a probe rung fails); others are retried.
CAPACITY_FAILURES = frozenset(
    {"cuda_oom", "startup_multi_device", "nccl_abort_hang", "warmup_outputs_missing", "stall", "timeout"}
)
PROBE_ITERATIONS = 2


def stage_devices(spec: JobSpec, stage: Stage) -> list[str]:
    workload = spec.workload
    if stage.devices is not None:
        return list(stage.devices)
    if isinstance(workload, MimicKitWorkload) and workload.devices:
        return list(workload.devices)
    return ["cuda:0"] if spec.gpu_count() else ["cpu"]


def plan_stage(spec: JobSpec, stage: Stage, memory: JobMemory) -> tuple[Plan, JobMemory]:
    """The parameters of a stage's first attempt, and the job's memory with the stage's own
    memory begun (a probe ladder's bisection, a sweep's first point)."""
    devices = stage_devices(spec, stage)
    gpus = spec.gpu_count() if stage.devices is None else len([d for d in devices if d.startswith("cuda")])
    if stage.kind in EVALUATING and gpus > 1:
        gpus = 1  # the runbook: keep test/visualize single-GPU for reliability
    plan = Plan(
        gpus=gpus,
        processes=1 if stage.kind in EVALUATING else len(devices),
        nccl_preset=spec.nccl.preset,
    )
    workload = spec.workload
    if not isinstance(workload, MimicKitWorkload):
        return plan, memory
    num_envs = stage.num_envs or memory.num_envs or workload.num_envs
    if stage.kind == "visualize":
        num_envs = stage.num_envs or 1
    plan = replace(plan, num_envs=num_envs, agent_overrides=dict(workload.agent_overrides or {}))
    if stage.kind in EVALUATING:
        plan = replace(
            plan, test_episodes=stage.test_episodes or 1, model_file=model_for(stage, memory) or workload.model_file
        )
    else:
        max_samples = stage.max_samples or (None if stage.kind == "long_run" else workload.max_samples)
        plan = replace(plan, max_samples=max_samples, model_file=workload.model_file)
    if stage.kind == "probe" and stage.ladder:
        probe = probe_begin(stage.ladder)
        memory = memory.with_stage(probe=probe)
        plan = replace(plan, num_envs=probe.rungs[probe_mid(probe)])
    if stage.kind in ("probe", "sweep"):
        plan = replace(plan, max_samples=stage.point_max_samples)
    if stage.kind == "sweep" and stage.points:
        memory = memory.with_stage(sweep=SweepState())
        plan = sweep_point_plan(stage, 0, plan)
    return plan, memory


def model_for(stage: Stage, memory: JobMemory) -> str | None:
    """The model.pt a test or visualize stage loads: the named stage's, or the latest."""
    if stage.model_from is not None:
        return memory.models.get(stage.model_from)
    return memory.latest_model


def probe_samples(plan: Plan) -> int:
    """A probe's sample budget when the stage sets none: two iterations."""
    return (plan.num_envs or 1) * STEPS_PER_ITERATION * (plan.processes or 1) * PROBE_ITERATIONS


# --- probe ladder ------------------------------------------------------------------


def probe_begin(ladder: list[int]) -> ProbeState:
    rungs = tuple(sorted(set(ladder), reverse=True))
    return ProbeState(rungs=rungs, lo=0, hi=len(rungs))


def probe_mid(probe: ProbeState) -> int:
    return (probe.lo + probe.hi) // 2


@dataclass(frozen=True)
class ProbeStep:
    probe: ProbeState
    next_num_envs: int | None  # the next rung to try, when not done
    found: int | None  # the largest passing num_envs, when done


def probe_record(probe: ProbeState, num_envs: int, passed: bool) -> ProbeStep:
    """Fold one probe's result into the bisection state."""
    lo, hi = probe.lo, probe.hi
    index = probe.rungs.index(num_envs)
    if passed:
        hi = index
    else:
        lo = index + 1
    state = ProbeState(probe.rungs, lo, hi, (*probe.tried, (num_envs, passed)))
    if lo >= hi:
        return ProbeStep(state, None, probe.rungs[hi] if hi < len(probe.rungs) else None)
    return ProbeStep(state, probe.rungs[(lo + hi) // 2], None)


def probe_cost(rungs: int) -> int:
    """Worst-case probes for a ladder of `rungs` rungs."""
    count, span = 0, rungs + 1
    while span > 1:
        span = (span + 1) // 2
        count += 1
    return count


# --- sweep ---------------------------------------------------------------------------


def sweep_point_plan(stage: Stage, index: int, plan: Plan) -> Plan:
    assert stage.points is not None
    point = stage.points[index]
    return replace(plan, num_envs=point.num_envs, agent_overrides=dict(point.agent_overrides))


def sweep_best(rows: tuple[SweepRow, ...]) -> SweepRow | None:
    passing = [r for r in rows if r.passed and r.samples_per_second is not None]
    return max(passing, key=lambda r: float(r.samples_per_second or 0.0)) if passing else None


def sweep_tsv(rows: tuple[SweepRow, ...]) -> str:
    header = ["point", "num_envs", "agent_overrides", "samples_per_second", "gpu_utilization_pct", "passed", "failure"]
    lines = ["\t".join(header)]
    for row in rows:
        sps, util = row.samples_per_second, row.gpu_utilization_pct
        overrides = ",".join(f"{k}={v}" for k, v in sorted(row.agent_overrides.items())) or "-"
        cells = [
            str(row.point),
            str(row.num_envs),
            overrides,
            "-" if sps is None else f"{sps:.1f}",
            "-" if util is None else f"{util:.1f}",
            "pass" if row.passed else "fail",
            row.failure or "-",
        ]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"
