"""What people read: the one-line daemon status, status.json and report.md of a job.

report.md is the runbook's output checklist, filled in from the store and the attempts'
folders: exact commands, devices and num_envs, output paths and whether model.pt and
log.txt exist, whether the long run is alive, the test's Mean Return, the visualization
result, which fallback step solved what, whether the NCCL preset was applied.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mkd.fsutil import read_json
from mkd.memory import StageResult
from mkd.stagekinds import EVALUATING, TRAINING
from mkd.store import AttemptRecord, Event, JobRecord

if TYPE_CHECKING:  # `mkd status` imports this module for attempt_dict: no pydantic (mkd.spec) here
    from mkd.snapshot import DaemonView
    from mkd.spec import JobSpec


def status_line(view: DaemonView) -> str:
    """e.g. "2 running (deepmimic-e2e: iter 1200, 78k samples/s), 3 queued, 1 failed · GPU0 87% GPU1 91%"."""
    counts = view.jobs_by_state
    running = [j for j in view.jobs if j.state == "running"]
    parts: list[str] = []
    if running:
        shown = []
        for job in running[:2]:
            bits = [f"iter {job.iteration}"] if job.iteration is not None else []
            if job.samples_per_second:
                bits.append(f"{job.samples_per_second / 1000:.0f}k samples/s")
            shown.append(f"{job.job_id}: {', '.join(bits)}" if bits else job.job_id)
        more = ", ..." if len(running) > 2 else ""
        parts.append(f"{len(running)} running ({'; '.join(shown)}{more})")
    else:
        parts.append("0 running")
    for state in ("queued", "retry_wait", "failed"):
        if counts.get(state):
            parts.append(f"{counts[state]} {state.replace('_', ' ')}")
    line = ", ".join(parts)
    if view.gpu.available and view.gpu.gpus:
        line += " · " + " ".join(
            f"GPU{g.index} {'?' if g.utilization_pct is None else f'{g.utilization_pct:.0f}'}%" for g in view.gpu.gpus
        )
    elif not view.gpu.available:
        line += " · no GPU metrics"
    return line


def _command(attempt: AttemptRecord) -> str:
    data = read_json(Path(attempt.dir) / "command.json")
    return shlex.join(data["argv"]) if isinstance(data, dict) else "(not recorded)"


def _alive(attempt: AttemptRecord) -> bool:
    return attempt.state != "ended"


def attempt_dict(a: AttemptRecord, *, full: bool = False) -> dict[str, Any]:
    """One attempt as status.json and `mkd status JOB --json` show it (full: params, progress, evidence)."""
    out: dict[str, Any] = {
        "number": a.number,
        "stage": a.stage_label,
        "state": a.state.value,
        "outcome": a.outcome,
        "failure_class": a.failure_class,
        "returncode": a.returncode,
        "signal": a.signal,
        "num_envs": a.params.num_envs,
        "gpus": list(a.params.gpu_indices),
        "slurm_job_id": a.run_ref.get("slurm_job_id"),  # with [executor] kind = "slurm"
        "dir": a.dir,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
    }
    if full:
        out.update(params=a.params.to_json(), progress=a.progress, evidence=a.evidence)
    return out


def status_dict(
    job: JobRecord, spec: JobSpec, attempts: list[AttemptRecord], live_progress: dict[str, Any] | None, wall: float
) -> dict[str, Any]:
    stages = spec.effective_stages
    stage = stages[min(job.stage_index, len(stages) - 1)]
    last = attempts[-1] if attempts else None
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": job.state.value,
        "reason": job.reason,
        "stage": stage.label(job.stage_index),
        "stage_index": job.stage_index,
        "stages": [s.label(i) for i, s in enumerate(stages)],
        "plan": None if job.plan is None else job.plan.to_json(),
        "attempts": [attempt_dict(a) for a in attempts],
        "progress": live_progress if live_progress is not None else (last.progress if last else {}),
        "results": {label: r.to_json() for label, r in job.memory.results.items()},
        "fallbacks": [{"stage": f.stage, "attempt": f.attempt, "step": f.step} for f in job.memory.fallbacks],
        "submitted_at": job.submitted_at,
        "finished_at": job.finished_at,
        "written_at": wall,
    }


def _stage_attempts(attempts: list[AttemptRecord], label: str) -> list[AttemptRecord]:
    return [a for a in attempts if a.stage_label == label]


def _devices(attempt: AttemptRecord) -> str:
    """Where an attempt ran: mkd's GPUs or the CPU, or what Slurm granted on which node, with its job id."""
    params = attempt.params
    if params.granted_gpus is not None:
        slurm_id = attempt.run_ref.get("slurm_job_id")
        granted = f"GPU(s) {','.join(params.granted_gpus) or '-'} on {params.node}"
        return granted + (f" (Slurm job {slurm_id})" if slurm_id else "")
    cpu = "cpu" if params.processes == 1 else f"cpu x{params.processes} processes"
    return ",".join(f"cuda:{i}" for i in params.gpu_indices) or cpu


def checklist(job: JobRecord, spec: JobSpec, attempts: list[AttemptRecord]) -> dict[str, str]:
    """The runbook's output checklist as ordered key/value lines."""
    from mkd.mimickit.results import check_train_artifacts

    items: dict[str, str] = {"job": job.job_id, "state": f"{job.state.value} ({job.reason})"}
    for index, stage in enumerate(spec.effective_stages):
        label = stage.label(index)
        tried = _stage_attempts(attempts, label)
        result = job.memory.results.get(label, StageResult())
        if not tried:
            items[f"{label}: status"] = f"skipped: {result.skipped}" if result.skipped else "not run"
            continue
        if result.passed is False:
            items[f"{label}: status"] = f"failed: {result.reason}"
        final = tried[-1]
        out_dir = Path(final.dir) / "out"
        items[f"{label}: command"] = _command(final)
        items[f"{label}: devices"] = _devices(final)
        items[f"{label}: num_envs"] = str(final.params.num_envs)
        items[f"{label}: attempts"] = str(len(tried))
        items[f"{label}: exit"] = f"returncode {final.returncode}, signal {final.signal}, outcome {final.outcome}"
        if stage.kind in TRAINING:
            artifacts = check_train_artifacts(out_dir)
            items[f"{label}: output"] = str(out_dir)
            items[f"{label}: model.pt"] = "yes" if artifacts["model.pt"] else "no"
            items[f"{label}: log.txt"] = "yes" if artifacts["log.txt"] else "no"
        if stage.kind == "long_run":
            items[f"{label}: alive"] = "yes" if _alive(final) else "no"
        test = final.progress.get("test_result")
        if stage.kind in EVALUATING:
            items[f"{label}: Mean Return"] = str(test["mean_return"]) if test else "not printed"
            items[f"{label}: Episodes"] = str(test["episodes"]) if test else "-"
        if stage.kind == "probe":
            items[f"{label}: chosen num_envs"] = str(result.num_envs if result.num_envs is not None else "-")
            items[f"{label}: probes"] = str(len(result.probes or ()) or len(tried))
            items[f"{label}: GPU-seconds probing"] = f"{job.memory.gpu_seconds_probing:.1f}"
        if stage.kind == "sweep" and result.best is not None:
            items[f"{label}: best point"] = f"{result.best.point} (num_envs={result.best.num_envs})"
        if stage.kind == "warmup" and result.promoted_num_envs is not None:
            items[f"{label}: promoted num_envs"] = str(result.promoted_num_envs)
    fallbacks = job.memory.fallbacks
    items["fallback"] = "; ".join(f"{f.stage} attempt {f.attempt}: {f.step}" for f in fallbacks) or "none"
    nccl = [a for a in attempts if (read_json(Path(a.dir) / "command.json") or {}).get("nccl")]
    items["NCCL preset applied"] = (
        f"yes ({', '.join(sorted({str(a.params.nccl_preset or 'job env') for a in nccl}))})" if nccl else "no"
    )
    return items


def render_report(job: JobRecord, spec: JobSpec, attempts: list[AttemptRecord], events: list[Event]) -> str:
    lines = [f"# mkd report: {job.job_id}", "", "## Checklist", ""]
    lines += [f"- {key}: {value}" for key, value in checklist(job, spec, attempts).items()]
    lines += [
        "",
        "## Attempts",
        "",
        "| # | stage | num_envs | GPUs | outcome | class | rc | signal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in attempts:
        gpus = ",".join(str(i) for i in a.params.gpu_indices) or "-"
        lines.append(
            f"| {a.number} | {a.stage_label} | {a.params.num_envs or '-'} | {gpus} | {a.outcome or a.state.value} "
            f"| {a.failure_class or '-'} | {a.returncode} | {a.signal} |"
        )
    failed = [a for a in attempts if a.failure_class and a.evidence]
    if failed:
        lines += ["", "## Failures", ""]
        for a in failed:
            lines.append(f"- attempt {a.number} ({a.stage_label}): {a.failure_class}")
            lines += [f"    {line}" for line in a.evidence[-5:]]
    lines += ["", "## Timeline", ""]
    for event in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.at))
        lines.append(f"- {stamp} [{event.kind}] {event.message}")
    return "\n".join(lines) + "\n"
