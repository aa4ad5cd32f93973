"""The runbook's procedures as stage logic: plans per stage, the probe ladder and the sweep.

Pure functions over a job's `stage_data` (a JSON dict in the store): what the first
attempt of a stage runs with, and how a probe or sweep point's result moves the stage on.
The probe ladder is a bisection over the sorted rungs, assuming that if num_envs passes
so does every smaller one: a ladder of n rungs costs at most ceil(log2(n + 1)) probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mkd.spec import JobSpec, MimicKitWorkload, Stage

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


def initial_plan(spec: JobSpec, stage: Stage, stage_data: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a stage's first attempt."""
    devices = stage_devices(spec, stage)
    gpus = spec.gpu_count() if stage.devices is None else len([d for d in devices if d.startswith("cuda")])
    if stage.kind in ("test", "visualize") and gpus > 1:
        gpus = 1  # the runbook: keep test/visualize single-GPU for reliability
    plan: dict[str, Any] = {
        "gpus": gpus,
        "processes": 1 if stage.kind in ("test", "visualize") else len(devices),
        "nccl_preset": spec.nccl.preset,
        "mesa": False,
        "master_port": None,
    }
    workload = spec.workload
    if not isinstance(workload, MimicKitWorkload):
        return plan
    num_envs = stage.num_envs or stage_data.get("num_envs") or workload.num_envs
    if stage.kind == "visualize":
        num_envs = stage.num_envs or 1
    plan["num_envs"] = num_envs
    if stage.kind in ("test", "visualize"):
        plan["test_episodes"] = stage.test_episodes or 1
        plan["model_file"] = model_for(stage, stage_data) or workload.model_file
    else:
        plan["max_samples"] = stage.max_samples or (None if stage.kind == "long_run" else workload.max_samples)
        plan["model_file"] = workload.model_file
    if stage.kind == "probe" and stage.ladder:
        probe = probe_begin(stage.ladder)
        stage_data["probe"] = probe
        plan["num_envs"] = stage.ladder[probe_mid(probe)]
    if stage.kind in ("probe", "sweep"):
        plan["max_samples"] = stage.point_max_samples
    if stage.kind == "sweep" and stage.points:
        stage_data["sweep"] = {"index": 0, "rows": []}
        plan.update(sweep_point_plan(stage, 0))
    if workload.agent_overrides:
        plan.setdefault("agent_overrides", dict(workload.agent_overrides))
    return plan


def model_for(stage: Stage, stage_data: dict[str, Any]) -> str | None:
    """The model.pt a test or visualize stage loads: the named stage's, or the latest."""
    models: dict[str, str] = stage_data.get("models", {})
    if stage.model_from is not None:
        return models.get(stage.model_from)
    latest = stage_data.get("latest_model")
    return str(latest) if latest else None


def probe_samples(plan: dict[str, Any]) -> int:
    """A probe's sample budget when the stage sets none: two iterations."""
    return int(plan.get("num_envs") or 1) * 32 * int(plan.get("processes") or 1) * PROBE_ITERATIONS


# --- probe ladder ------------------------------------------------------------------


def probe_begin(ladder: list[int]) -> dict[str, Any]:
    rungs = sorted(set(ladder), reverse=True)
    return {"rungs": rungs, "lo": 0, "hi": len(rungs), "tried": []}


def probe_mid(probe: dict[str, Any]) -> int:
    return (int(probe["lo"]) + int(probe["hi"])) // 2


@dataclass(frozen=True)
class ProbeStep:
    probe: dict[str, Any]
    next_num_envs: int | None  # the next rung to try, when not done
    found: int | None  # the largest passing num_envs, when done


def probe_record(probe: dict[str, Any], num_envs: int, passed: bool) -> ProbeStep:
    """Fold one probe's result into the bisection state."""
    rungs: list[int] = list(probe["rungs"])
    lo, hi = int(probe["lo"]), int(probe["hi"])
    index = rungs.index(num_envs)
    if passed:
        hi = index
    else:
        lo = index + 1
    state = {**probe, "lo": lo, "hi": hi, "tried": [*probe["tried"], [num_envs, passed]]}
    if lo >= hi:
        return ProbeStep(state, None, rungs[hi] if hi < len(rungs) else None)
    return ProbeStep(state, rungs[(lo + hi) // 2], None)


def probe_cost(rungs: int) -> int:
    """Worst-case probes for a ladder of `rungs` rungs."""
    count, span = 0, rungs + 1
    while span > 1:
        span = (span + 1) // 2
        count += 1
    return count


# --- sweep ---------------------------------------------------------------------------


def sweep_point_plan(stage: Stage, index: int) -> dict[str, Any]:
    assert stage.points is not None
    point = stage.points[index]
    return {"num_envs": point.num_envs, "agent_overrides": dict(point.agent_overrides)}


def sweep_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    passing = [r for r in rows if r.get("passed") and r.get("samples_per_second") is not None]
    return max(passing, key=lambda r: float(r["samples_per_second"])) if passing else None


def sweep_tsv(rows: list[dict[str, Any]]) -> str:
    header = ["point", "num_envs", "agent_overrides", "samples_per_second", "gpu_utilization_pct", "passed", "failure"]
    lines = ["\t".join(header)]
    for row in rows:
        sps = row.get("samples_per_second")
        util = row.get("gpu_utilization_pct")
        overrides = ",".join(f"{k}={v}" for k, v in sorted(row.get("agent_overrides", {}).items())) or "-"
        lines.append(
            "\t".join(
                [
                    str(row["point"]),
                    str(row["num_envs"]),
                    overrides,
                    "-" if sps is None else f"{float(sps):.1f}",
                    "-" if util is None else f"{float(util):.1f}",
                    "pass" if row.get("passed") else "fail",
                    row.get("failure") or "-",
                ]
            )
        )
    return "\n".join(lines) + "\n"
