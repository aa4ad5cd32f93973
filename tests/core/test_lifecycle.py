"""The lifecycle and the policy as tables: a job + the verdict on its attempt -> the next step.

Plus a property: over any sequence of verdicts, the lifecycle never asks for a transition the
state table forbids and never runs a stage more than max_attempts times.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkd.failures import FailureClass as F
from mkd.lifecycle import Ended, Job, Step, after_attempt, skip_stage
from mkd.memory import JobMemory, Plan
from mkd.policy import Observation, decide
from mkd.spec import JobSpec, Retry
from mkd.stages import plan_stage
from mkd.states import TRANSITIONS, JobState
from mkd.verdict import Verdict

WORKLOAD = {
    "kind": "mimickit",
    "arg_file": "args/a.txt",
    "engine_config": "data/engines/e.yaml",
    "devices": ["cuda:0"],
    "num_envs": 4096,
}


def spec(*stages: dict[str, Any], retry: dict[str, Any] | None = None, devices: list[str] | None = None) -> JobSpec:
    workload = {**WORKLOAD, "devices": devices or ["cuda:0"]}
    data: dict[str, Any] = {"workload": workload, "stages": list(stages) or [{"kind": "train"}]}
    data["retry"] = {"backoff": "1s", **(retry or {})}
    return JobSpec.model_validate(data)


def start(job_spec: JobSpec, stage_index: int = 0, memory: JobMemory | None = None) -> Job:
    stage = job_spec.effective_stages[stage_index]
    plan, memory = plan_stage(job_spec, stage, memory or JobMemory())
    return Job(job_spec, stage_index, plan, memory)


def ended(job: Job, number: int = 1, **kw: Any) -> Ended:
    return Ended(
        number=number,
        plan=job.plan,
        progress=kw.pop("progress", {}),
        started_at=100.0,
        ended_at=110.0,
        had_progress=kw.pop("had_progress", True),
        **kw,
    )


def fails(failure: F, permanent: bool = False) -> Verdict:
    return Verdict(failure, ("evidence",), permanent)


PASS = Verdict(None)
RNG = random.Random(1)


def step_of(job: Job, verdict: Verdict, **kw: Any) -> Step:
    return after_attempt(job, ended(job, **kw), verdict, RNG)


# --- one step at a time ------------------------------------------------------------------

TABLE: list[tuple[str, JobSpec, Verdict, JobState, dict[str, Any]]] = [
    ("the only stage passes: the job succeeds", spec(), PASS, JobState.SUCCEEDED, {}),
    (
        "train passes: on to the test stage",
        spec({"kind": "train"}, {"kind": "test", "test_episodes": 2}),
        PASS,
        JobState.STEPPING,
        {"stage_index": 1},
    ),
    ("a CUDA OOM steps num_envs down", spec(), fails(F.CUDA_OOM), JobState.RETRY_WAIT, {"num_envs": 2048}),
    (
        "a CUDA OOM walks the job's own ladder",
        spec(retry={"ladder": [3000, 1000]}),
        fails(F.CUDA_OOM),
        JobState.RETRY_WAIT,
        {"num_envs": 3000},
    ),
    ("NaN is permanent: the job fails", spec(), fails(F.NAN_DIVERGENCE, True), JobState.FAILED, {}),
    ("a config error fails at once", spec(), fails(F.CONFIG_ERROR, True), JobState.FAILED, {}),
    ("mkd's own error fails at once", spec(), fails(F.MKD_ERROR, True), JobState.FAILED, {}),
    ("cancelled is cancelled", spec(), fails(F.CANCELLED), JobState.CANCELLED, {}),
    ("a lost shim is run again unchanged", spec(), fails(F.LOST), JobState.RETRY_WAIT, {"num_envs": 4096}),
    ("a stall in training is run again", spec(), fails(F.STALL), JobState.RETRY_WAIT, {}),
    (
        "a test stage that hung is not run again unchanged",
        spec({"kind": "test", "test_episodes": 1}),
        fails(F.TIMEOUT),
        JobState.FAILED,
        {},
    ),
    (
        "a failed stage with on_fail=continue moves on",
        spec({"kind": "train", "on_fail": "continue"}, {"kind": "test", "test_episodes": 1}),
        fails(F.CONFIG_ERROR, True),
        JobState.STEPPING,
        {"stage_index": 1},
    ),
    (
        "a port clash takes a new port",
        spec(devices=["cuda:0", "cuda:1"]),
        fails(F.PORT_IN_USE),
        JobState.RETRY_WAIT,
        {"master_port": None},
    ),
]


@pytest.mark.parametrize(("case", "job_spec", "verdict", "state", "expect"), TABLE, ids=[t[0] for t in TABLE])
def test_one_step(case: str, job_spec: JobSpec, verdict: Verdict, state: JobState, expect: dict[str, Any]) -> None:
    step = step_of(start(job_spec), verdict)
    assert step.state is state, step.reason
    if "stage_index" in expect:
        assert step.stage_index == expect["stage_index"]
    for key in ("num_envs", "master_port"):
        if key in expect:
            assert step.plan is not None and getattr(step.plan, key) == expect[key]
    assert step.retry is (state is JobState.RETRY_WAIT)


def test_the_only_stage_failing_under_continue_is_not_a_plain_success() -> None:
    step = step_of(start(spec({"kind": "train", "on_fail": "continue"})), fails(F.CONFIG_ERROR, True))
    assert step.state is JobState.SUCCEEDED
    assert step.reason.startswith("succeeded, 1 stage(s) failed and skipped (1-train)")


def test_a_warmup_promotes_its_num_envs_to_the_long_run() -> None:
    job = start(spec({"kind": "warmup", "num_envs": 512}, {"kind": "long_run"}))
    step = step_of(job, PASS, model_file="/runs/x/out/model.pt")
    assert step.plan is not None and step.plan.num_envs == 512
    assert step.memory.models == {"1-warmup": "/runs/x/out/model.pt"}
    assert step.memory.results["1-warmup"].promoted_num_envs == 512


def test_a_long_run_resumes_from_its_model_and_counts_samples_on() -> None:
    job = start(spec({"kind": "long_run", "max_samples": 1_000_000}))
    progress = {"samples": 300_000, "iteration": 10}
    step = step_of(job, fails(F.LONG_RUN_EXITED), progress=progress, model_file="/m.pt")
    assert step.plan is not None
    assert (step.plan.model_file, step.plan.max_samples) == ("/m.pt", 700_000)
    assert (step.memory.stage.samples_offset, step.memory.stage.iteration_offset) == (300_000, 10)
    job = replace(job, plan=step.plan, memory=step.memory)
    done = step_of(job, PASS, number=2, progress={"samples": 700_000, "iteration": 25})
    assert done.memory.results["1-long_run"].samples == 1_000_000, "the result counts the resumed run's samples on"
    assert done.memory.results["1-long_run"].iteration == 35


def test_the_probe_ladder_bisects_then_moves_on() -> None:
    job = start(spec({"kind": "probe", "ladder": [400, 300, 200, 100]}, {"kind": "train"}))
    assert job.plan.num_envs == 200  # the middle rung first
    first = step_of(job, PASS)
    assert first.state is JobState.STEPPING and first.plan is not None and first.plan.num_envs == 300
    assert not first.retry, "a healthy probe step is not a retry"
    job = replace(job, plan=first.plan, memory=first.memory)
    second = step_of(job, fails(F.CUDA_OOM))
    assert second.stage_index == 1 and second.plan is not None and second.plan.num_envs == 200
    assert second.memory.num_envs == 200


def test_a_sweep_records_each_point_and_takes_the_best() -> None:
    points = [{"num_envs": 8}, {"num_envs": 16}]
    job = start(spec({"kind": "sweep", "points": points}, {"kind": "train"}))
    first = step_of(job, PASS, samples_per_second=10.0)
    assert first.state is JobState.STEPPING and first.sweep_rows is not None and len(first.sweep_rows) == 1
    assert first.plan is not None
    job = replace(job, plan=first.plan, memory=first.memory)
    second = step_of(job, PASS, samples_per_second=20.0)
    assert second.stage_index == 1 and second.plan is not None and second.plan.num_envs == 16


def test_a_skipped_visualize_stage_is_recorded_with_why() -> None:
    job = start(spec({"kind": "train"}, {"kind": "visualize"}), stage_index=1)
    step = skip_stage(job, "no DISPLAY", running=False)
    assert step.state is JobState.SUCCEEDED
    assert step.memory.results["2-visualize"].skipped == "no DISPLAY"


# --- the policy's own table --------------------------------------------------------------

POLICY: list[tuple[str, Observation, str, str]] = [
    ("OOM on a GPU others fill: retry unchanged", Observation("train", "cuda_oom", foreign_memory=True), "retry", ""),
    ("OOM alone: step down", Observation("train", "cuda_oom"), "retry", "num_envs"),
    ("class A on two GPUs: the NCCL preset", Observation("train", "startup_multi_device", gpus=2), "retry", "nccl"),
    ("GLSL: the Mesa overrides", Observation("visualize", "visualize_gl"), "retry", "mesa"),
    ("env mismatch: give up", Observation("train", "env_mismatch"), "fail", ""),
]


@pytest.mark.parametrize(("case", "obs", "action", "change"), POLICY, ids=[p[0] for p in POLICY])
def test_policy(case: str, obs: Observation, action: str, change: str) -> None:
    plan = Plan(gpus=obs.gpus, processes=max(1, obs.gpus), num_envs=4096)
    decision = decide(obs, plan, Retry(), attempts_in_stage=1, no_progress_streak=0, rng=RNG)
    assert decision.action == action
    assert (change in "".join(decision.changes)) if change else not decision.changes


def test_policy_stops_at_max_attempts_and_at_the_crash_loop_breaker() -> None:
    obs = Observation("train", "unknown")
    plan = Plan(num_envs=64)
    assert decide(obs, plan, Retry(max_attempts=3), attempts_in_stage=3, no_progress_streak=0, rng=RNG).action == "fail"
    breaker = decide(obs, plan, Retry(), attempts_in_stage=1, no_progress_streak=3, rng=RNG)
    assert breaker.action == "fail" and "crash-loop breaker" in breaker.reason


# --- the property --------------------------------------------------------------------------

VERDICTS = st.one_of(
    st.just(PASS),
    st.sampled_from([c for c in F if c is not F.CANCELLED]).map(lambda c: fails(c)),
    st.sampled_from(list(F)).map(lambda c: fails(c, permanent=True)),
)
SPECS = st.sampled_from(
    [
        spec(),
        spec({"kind": "warmup"}, {"kind": "long_run"}, {"kind": "test", "test_episodes": 1}),
        spec({"kind": "probe", "ladder": [64, 128, 256, 512]}, {"kind": "train"}, devices=["cuda:0", "cuda:1"]),
        spec(
            {"kind": "sweep", "points": [{"num_envs": 8}, {"num_envs": 16}]}, {"kind": "train", "on_fail": "continue"}
        ),
        spec({"kind": "train"}, {"kind": "visualize"}, retry={"max_attempts": 2}),
    ]
)


@settings(max_examples=300, deadline=None)
@given(SPECS, st.lists(VERDICTS, min_size=1, max_size=40), st.booleans())
def test_any_verdicts_keep_to_the_state_table_and_max_attempts(
    job_spec: JobSpec, verdicts: list[Verdict], progress: bool
) -> None:
    job = start(job_spec)
    state = JobState.RUNNING  # an attempt just ended
    runs: dict[int, int] = {}  # stage index -> attempts since its last healthy step
    for number, verdict in enumerate(verdicts, start=1):
        runs[job.stage_index] = runs.get(job.stage_index, 0) + 1
        step = after_attempt(job, ended(job, number, had_progress=progress), verdict, random.Random(number))
        assert step.state in TRANSITIONS[state], f"{state} -> {step.state}: {step.reason}"
        if step.state is JobState.RETRY_WAIT:
            assert runs[job.stage_index] < job.spec.retry.max_attempts, "retried past max_attempts"
        if step.state.finished or step.state is JobState.HELD:  # held: a person resumes it
            return
        if step.state is JobState.STEPPING:
            runs[job.stage_index] = 0
        job = replace(
            job,
            stage_index=job.stage_index if step.stage_index is None else step.stage_index,
            plan=step.plan or job.plan,
            memory=step.memory,
        )
        state = JobState.RUNNING  # the next attempt starts (retry_wait/stepping -> running)
        assert JobState.RUNNING in TRANSITIONS[step.state]
