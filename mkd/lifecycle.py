"""The lifecycle: a job, the verdict on its attempt that just ended -> what happens next.

Pure. `after_attempt` answers with one `Step`: retry with a new plan after a backoff, the
next probe rung, the next sweep point, the next stage, or the job's end (succeeded, failed,
cancelled). `mkd.book` writes a step to the store in one transaction; the daemon starts
whatever is runnable afterwards. The retry ladder itself is `mkd.policy`, the stage
procedures (probe bisection, sweep, per-stage plans) are `mkd.stages`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mkd.failures import FailureClass
from mkd.memory import Fallback, JobMemory, JsonValue, Plan, StageMemory, StageResult, SweepRow
from mkd.policy import Decision, Observation, decide
from mkd.spec import JobSpec, Stage
from mkd.stagekinds import TRAINING, StageKind
from mkd.stages import CAPACITY_FAILURES, plan_stage, probe_begin, probe_mid, probe_record, sweep_best, sweep_point_plan
from mkd.states import JobState
from mkd.verdict import Verdict

RESUMABLE = frozenset({StageKind.TRAIN, StageKind.WARMUP, StageKind.LONG_RUN})  # a pause goes on from model.pt


@dataclass(frozen=True)
class Ended:
    """What the lifecycle needs to know about the attempt that ended (read by the caller)."""

    number: int
    plan: Plan  # what it ran with
    progress: Mapping[str, JsonValue]  # its last figures (mkd.live.LiveAttempt.progress)
    started_at: float  # wall clock
    ended_at: float
    had_progress: bool  # an iteration or a test result was seen
    model_file: str | None = None  # its out/model.pt, when written
    gpu_pids: tuple[int, ...] = ()  # its processes NVML listed
    foreign_memory: bool = False  # other processes hold memory on its GPUs
    samples_per_second: float | None = None  # median, for a sweep row
    utilization_pct: float | None = None  # mean GPU utilization, for a sweep row


@dataclass(frozen=True)
class Step:
    """What happens to the job next; applied by mkd.book in one transaction."""

    state: JobState
    reason: str
    memory: JobMemory
    plan: Plan | None = None  # the next attempt's plan; None keeps the job's
    stage_index: int | None = None  # set when the job moves to another stage
    delay_seconds: float | None = None  # the next attempt starts this much later; None: at once
    retry: bool = False  # a retry after a failure (counted in mkd_retries_total)
    events: tuple[tuple[str, str], ...] = ()  # (kind, message) for the timeline
    sweep_rows: tuple[SweepRow, ...] | None = None  # summary.tsv to write for the stage


@dataclass(frozen=True)
class Job:
    """The job as the lifecycle sees it."""

    spec: JobSpec
    stage_index: int
    plan: Plan
    memory: JobMemory
    cancel_requested: bool = False

    @property
    def stage(self) -> Stage:
        return self.spec.effective_stages[self.stage_index]

    @property
    def label(self) -> str:
        return self.stage.label(self.stage_index)


def after_attempt(job: Job, ended: Ended, verdict: Verdict, rng: random.Random) -> Step:
    """The next step after an attempt of the job's current stage ended with `verdict`."""
    memory = _count(job, ended)
    job = replace(job, memory=memory)
    failure = verdict.failure
    if failure is FailureClass.CANCELLED or job.cancel_requested:
        return Step(JobState.CANCELLED, "cancelled", memory)
    if failure is FailureClass.PAUSED:
        return _paused(job, ended)
    kind = job.stage.kind
    if kind == "probe" and (failure is None or failure in CAPACITY_FAILURES):
        return _probe_step(job, ended, passed=failure is None)
    if kind == "sweep" and (failure is None or failure in CAPACITY_FAILURES or verdict.permanent):
        return _sweep_step(job, ended, failure)
    if failure is None:
        return _passed(job, ended)
    obs = Observation(
        stage_kind=kind,
        failure=failure.value,
        permanent=verdict.permanent,
        gpus=ended.plan.gpus,
        processes=ended.plan.processes,
        had_progress=ended.had_progress,
        foreign_memory=ended.foreign_memory,
    )
    decision = decide(
        obs,
        job.plan,
        job.spec.retry,
        attempts_in_stage=memory.stage.attempts,
        no_progress_streak=memory.stage.no_progress,
        rng=rng,
    )
    return _apply(job, ended, decision)


def skip_stage(job: Job, why: str, *, running: bool) -> Step:
    """A stage that cannot run here (a visualize stage without a display) is skipped with the reason."""
    memory = job.memory.with_result(job.label, StageResult(skipped=why))
    return advance(replace(job, memory=memory), f"{job.stage.kind} stage {job.label} skipped: {why}", running)


def advance(job: Job, reason: str, running: bool = True) -> Step:
    """On to the next stage, keeping what later stages use; or the job's success after the last."""
    index = job.stage_index + 1
    if index >= len(job.spec.effective_stages):
        failed = [label for label, result in job.memory.results.items() if result.passed is False]
        if failed:  # on_fail = "continue" let it go on: its success must not hide them
            reason = f"succeeded, {len(failed)} stage(s) failed and skipped ({', '.join(failed)}): {reason}"
        return Step(JobState.SUCCEEDED, reason, job.memory)
    nxt = job.spec.effective_stages[index]
    plan, memory = plan_stage(job.spec, nxt, job.memory.next_stage())
    state = JobState.STEPPING if running else JobState.QUEUED
    return Step(state, f"{reason}; next stage {nxt.label(index)}", memory, plan=plan, stage_index=index)


def _count(job: Job, ended: Ended) -> JobMemory:
    """The stage's counters after one more attempt."""
    stage = job.memory.stage
    memory = job.memory.with_stage(
        last_end_wall=ended.ended_at,
        last_gpus=ended.plan.gpu_uuids,
        last_gpu_pids=ended.gpu_pids,
        attempts=stage.attempts + 1,
        no_progress=0 if ended.had_progress else stage.no_progress + 1,
    )
    if job.stage.kind == "probe":
        seconds = (ended.ended_at - ended.started_at) * max(1, len(ended.plan.gpu_uuids))
        memory = replace(memory, gpu_seconds_probing=memory.gpu_seconds_probing + seconds)
    return memory


def _paused(job: Job, ended: Ended) -> Step:
    """mkd pause: held, not counted as a try; a training stage resumes from its last model.pt."""
    memory = job.memory.with_stage(attempts=max(0, job.memory.stage.attempts - 1))
    plan = job.plan
    if job.stage.kind in RESUMABLE:
        plan, memory = _resume(plan, ended, memory)
    return Step(JobState.HELD, f"paused at attempt {ended.number}; `mkd resume` goes on", memory, plan=plan)


def _passed(job: Job, ended: Ended) -> Step:
    memory = job.memory
    first = StageResult(passed=True, attempt=ended.number, num_envs=job.plan.num_envs)
    result = _figures(first, ended.progress, memory.stage)
    if job.stage.kind in TRAINING and ended.model_file:
        memory = replace(memory, models={**memory.models, job.label: ended.model_file}, latest_model=ended.model_file)
    if job.stage.kind == "warmup":
        memory = replace(memory, num_envs=job.plan.num_envs)
        result = replace(result, promoted_num_envs=job.plan.num_envs)
    test = ended.progress.get("test_result")
    if isinstance(test, dict):
        result = replace(result, test_result=test)
    memory = memory.with_result(job.label, result)
    return advance(replace(job, memory=memory), f"stage {job.label} passed")


def _figures(result: StageResult, progress: Mapping[str, JsonValue], stage: StageMemory) -> StageResult:
    """The attempt's last figures (iteration, samples, returns, median rate) into its stage result."""

    def number(key: str) -> float | None:
        value = progress.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    iteration, samples = number("iteration"), number("samples")
    return replace(
        result,
        iteration=None if iteration is None else int(iteration) + stage.iteration_offset,
        samples=None if samples is None else int(samples) + stage.samples_offset,  # a resumed run counts on
        train_return=number("train_return"),
        test_return=number("test_return"),
        median_samples_per_second=number("median_samples_per_second"),
    )


def _apply(job: Job, ended: Ended, decision: Decision) -> Step:
    """A policy decision after a failure: fail the stage (or the job), or retry with the changes."""
    if decision.action == "fail":
        return _stage_failed(job, decision.reason)
    memory = job.memory
    plan = job.plan.with_changes(decision.changes)
    if decision.resume:
        plan, memory = _resume(plan, ended, memory)
    if decision.changes:
        fallback = Fallback(job.label, ended.number, decision.reason)
        memory = replace(memory, fallbacks=(*memory.fallbacks, fallback))
    return Step(
        JobState.RETRY_WAIT,
        f"{decision.reason}; next attempt in {decision.delay_seconds:.1f} s",
        memory,
        plan=plan,
        delay_seconds=decision.delay_seconds,
        retry=True,
    )


def _stage_failed(job: Job, reason: str) -> Step:
    memory = job.memory.with_result(job.label, StageResult(passed=False, reason=reason))
    if job.stage.on_fail == "continue":
        return advance(replace(job, memory=memory), f"stage {job.label} failed ({reason}); continuing")
    return Step(JobState.FAILED, reason, memory)


def _resume(plan: Plan, ended: Ended, memory: JobMemory) -> tuple[Plan, JobMemory]:
    """Continue a long run from its last model.pt; MimicKit restarts its counters, so mkd keeps offsets."""
    done = _int(ended.progress.get("samples"))
    memory = memory.with_stage(
        samples_offset=memory.stage.samples_offset + done,
        iteration_offset=memory.stage.iteration_offset + _int(ended.progress.get("iteration")),
    )
    if ended.model_file:
        plan = replace(plan, model_file=ended.model_file)
    if plan.max_samples:
        plan = replace(plan, max_samples=max(1, plan.max_samples - done))
    return plan, memory


def _int(value: JsonValue) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


# --- the probe ladder and the sweep --------------------------------------------------


def _probe_step(job: Job, ended: Ended, *, passed: bool) -> Step:
    probe = job.memory.stage.probe
    num_envs = job.plan.num_envs
    assert probe is not None and num_envs is not None, "a probe stage always has a ladder and a rung"
    step = probe_record(probe, num_envs, passed)
    memory = job.memory.with_stage(probe=step.probe, attempts=0)
    event = ("probe", f"probe num_envs={num_envs}: {'pass' if passed else 'fail'}")
    if step.next_num_envs is not None:
        plan = replace(job.plan, num_envs=step.next_num_envs, max_samples=job.stage.point_max_samples)
        return Step(JobState.STEPPING, f"next probe num_envs={step.next_num_envs}", memory, plan, events=(event,))
    if step.found is not None:
        result = StageResult(passed=True, num_envs=step.found, probes=step.probe.tried, gpus=job.plan.gpus)
        memory = replace(memory, num_envs=step.found).with_result(job.label, result)
        done = advance(replace(job, memory=memory), f"probe ladder chose num_envs={step.found}")
        return replace(done, events=(event, *done.events))
    if job.plan.multi_device and job.spec.retry.single_device_fallback:
        assert job.stage.ladder is not None
        again = probe_begin(job.stage.ladder)
        why = "every rung failed on several devices: single device"
        memory = replace(memory, fallbacks=(*memory.fallbacks, Fallback(job.label, ended.number, why)))
        memory = memory.with_stage(probe=again)
        plan = replace(job.plan, gpus=min(1, job.plan.gpus), processes=1, num_envs=again.rungs[probe_mid(again)])
        return Step(JobState.STEPPING, "every rung failed: single-device probe ladder", memory, plan, events=(event,))
    failed = _stage_failed(replace(job, memory=memory), "probe ladder: no rung passed")
    return replace(failed, events=(event, *failed.events))


def _sweep_step(job: Job, ended: Ended, failure: FailureClass | None) -> Step:
    sweep = job.memory.stage.sweep
    points = job.stage.points
    assert sweep is not None and points is not None, "a sweep stage always has points"
    point = points[sweep.index]
    row = SweepRow(
        point=sweep.index + 1,
        num_envs=point.num_envs,
        agent_overrides=dict(point.agent_overrides),
        samples_per_second=ended.samples_per_second,
        gpu_utilization_pct=ended.utilization_pct,
        passed=failure is None,
        failure=None if failure is None else failure.value,
    )
    rows = (*sweep.rows, row)
    memory = job.memory.with_stage(sweep=replace(sweep, index=sweep.index + 1, rows=rows), attempts=0)
    if sweep.index + 1 < len(points):
        plan = sweep_point_plan(job.stage, sweep.index + 1, job.plan)
        reason = f"sweep point {sweep.index + 2} of {len(points)}"
        return Step(JobState.STEPPING, reason, memory, plan, sweep_rows=rows)
    best = sweep_best(rows)
    if best is None:
        return replace(_stage_failed(replace(job, memory=memory), "sweep: no point passed"), sweep_rows=rows)
    memory = replace(memory, num_envs=best.num_envs, sweep_best=best)
    memory = memory.with_result(job.label, StageResult(passed=True, best=best, points=len(rows)))
    done = advance(replace(job, memory=memory), f"sweep best point {best.point} (num_envs={best.num_envs})")
    return replace(done, sweep_rows=rows)
