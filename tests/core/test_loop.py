"""The daemon's loop in process, on a fake clock, executor and NVML: the stage procedures and the
retry ladder run end to end through the real intake, store, verdict, lifecycle and book, in
milliseconds. The subprocess suite is the end-to-end layer for the same behaviour."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mkd.daemon import Daemon
from mkd.executors.base import LaunchRequest
from mkd.memory import Plan
from mkd.states import JobState
from tests.core.loop import (
    CRASH,
    OOM,
    PASS_TEST,
    PASS_TRAIN,
    FakeClock,
    FakeExecutor,
    Outcome,
    argv_value,
    make_daemon,
    run_until_idle,
)

HEAD = """[workload]
kind = "mimickit"
arg_file = "args/deepmimic_humanoid_ppo_args.txt"
engine_config = "data/engines/newton_engine.yaml"
devices = ["cuda:0"]
num_envs = 4096

[retry]
backoff = "1s"
"""


def num_envs(request: LaunchRequest) -> int:
    return int(argv_value(request.spec.argv, "--num_envs") or 0)


def by_mode(request: LaunchRequest) -> Outcome:
    return PASS_TEST if argv_value(request.spec.argv, "--mode") == "test" else PASS_TRAIN


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[Path, list[Daemon]]]:
    made: list[Daemon] = []
    yield tmp_path, made
    for daemon in made:
        daemon.close()


def start(loop: tuple[Path, list[Daemon]], script: object, gpus: int = 2) -> tuple[Daemon, FakeClock, FakeExecutor]:
    root, made = loop
    daemon, clock = make_daemon(root, script, gpus)  # type: ignore[arg-type]
    made.append(daemon)
    executor = daemon.runs.executor
    assert isinstance(executor, FakeExecutor)
    return daemon, clock, executor


def drop(daemon: Daemon, name: str, text: str) -> None:
    (daemon.layout.incoming / name).write_text(text)


def test_warmup_promotes_its_num_envs_to_the_long_run(loop: tuple[Path, list[Daemon]]) -> None:
    daemon, clock, executor = start(loop, by_mode)
    stages = '[[stages]]\nkind = "warmup"\nnum_envs = 512\n\n[[stages]]\nkind = "long_run"\n'
    drop(daemon, "promo.toml", HEAD + stages)
    run_until_idle(daemon, clock)
    job = daemon.store.find_job("promo")
    assert job is not None and job.state == "succeeded", job and job.reason
    assert [num_envs(r) for r in executor.launches] == [512, 512]
    assert job.memory.results["1-warmup"].promoted_num_envs == 512
    model = argv_value(executor.launches[1].spec.argv, "--model_file")
    assert model is None, "the long run starts fresh; only a resume loads a model"


def test_the_probe_ladder_bisects_and_the_next_stage_uses_its_rung(loop: tuple[Path, list[Daemon]]) -> None:
    daemon, clock, executor = start(loop, lambda r: PASS_TRAIN if num_envs(r) <= 256 else OOM)
    stages = (
        '[[stages]]\nkind = "probe"\nladder = [512, 384, 256, 128, 64]\npoint_max_samples = 1000\n\n'
        '[[stages]]\nkind = "train"\n'
    )
    drop(daemon, "probe.toml", HEAD + stages)
    run_until_idle(daemon, clock)
    job = daemon.store.find_job("probe")
    assert job is not None and job.state == "succeeded", job and job.reason
    tried = [num_envs(r) for r in executor.launches]
    assert tried == [256, 384, 256], "middle rung, then up after a pass; 384 fails: 256 it is, then the train"
    assert job.memory.results["1-probe"].num_envs == 256
    states = [e.message for e in daemon.store.events(job.job_id) if e.kind == "state"]
    assert any("-> stepping" in m for m in states), "a healthy probe step is stepping, not retry_wait"
    assert not any("retry_wait" in m for m in states)


def test_a_sweep_writes_its_summary_and_the_next_stage_takes_the_best(loop: tuple[Path, list[Daemon]]) -> None:
    daemon, clock, executor = start(loop, lambda r: PASS_TRAIN if num_envs(r) < 64 else OOM)
    stages = (
        '[[stages]]\nkind = "sweep"\npoint_max_samples = 1000\n'
        "points = [{num_envs = 16}, {num_envs = 32}, {num_envs = 64}]\n\n"
        '[[stages]]\nkind = "train"\n'
    )
    drop(daemon, "sweep.toml", HEAD + stages)
    run_until_idle(daemon, clock)
    job = daemon.store.find_job("sweep")
    assert job is not None and job.state == "succeeded", job and job.reason
    summary = (daemon.layout.runs_dir / job.job_id / "summary.tsv").read_text().splitlines()
    assert [line.split("\t")[5] for line in summary[1:]] == ["pass", "pass", "fail"]
    assert num_envs(executor.launches[-1]) in (16, 32)


def test_an_oom_steps_down_and_a_long_run_resumes_from_its_model(loop: tuple[Path, list[Daemon]]) -> None:
    outcomes = iter([Outcome(PASS_TRAIN.text, returncode=1), PASS_TRAIN])
    daemon, clock, executor = start(loop, lambda r: next(outcomes))
    drop(daemon, "resume.toml", HEAD + '[[stages]]\nkind = "long_run"\nmax_samples = 100000000\n')
    run_until_idle(daemon, clock)
    job = daemon.store.find_job("resume")
    assert job is not None and job.state == "succeeded", job and job.reason
    first, second = executor.launches
    assert argv_value(second.spec.argv, "--model_file") == str(first.attempt_dir / "out" / "model.pt")
    done = int(daemon.store.attempts(job.job_id)[0].progress["samples"])
    assert argv_value(second.spec.argv, "--max_samples") == str(100_000_000 - done)
    assert job.memory.stage.samples_offset == done, "MimicKit counts from 0 again; mkd counts on"


def test_the_crash_loop_breaker_stops_a_job_that_never_makes_progress(loop: tuple[Path, list[Daemon]]) -> None:
    daemon, clock, executor = start(loop, lambda r: CRASH)
    drop(daemon, "crash.toml", HEAD + "max_attempts = 10\n")
    run_until_idle(daemon, clock)
    job = daemon.store.find_job("crash")
    assert job is not None and job.state == "failed"
    assert "crash-loop breaker" in job.reason
    assert len(executor.launches) == 3


def test_cuda_oom_walks_down_the_ladder_then_passes(loop: tuple[Path, list[Daemon]]) -> None:
    daemon, clock, executor = start(loop, lambda r: PASS_TRAIN if num_envs(r) <= 1024 else OOM)
    drop(daemon, "oom.toml", HEAD)
    run_until_idle(daemon, clock)
    job = daemon.store.find_job("oom")
    assert job is not None and job.state == "succeeded", job and job.reason
    assert [num_envs(r) for r in executor.launches] == [4096, 2048, 1024]
    assert [f.step for f in job.memory.fallbacks] == [
        "cuda_oom: step num_envs down from 4096 to 2048",
        "cuda_oom: step num_envs down from 2048 to 1024",
    ]


def test_a_stored_job_this_mkd_cannot_read_is_failed_at_restore_not_a_crash(tmp_path: Path) -> None:
    """An upgrade tightened the job-file ranges: a job stored by the older mkd no longer validates."""
    daemon, clock = make_daemon(tmp_path, lambda r: PASS_TRAIN)
    spec = {"workload": {"kind": "command", "argv": ["sleep", "1"]}, "retry": {"max_attempts": 10**9}}
    daemon.store.insert_job(
        job_id="old", name="old", priority=0, source_file="old.toml", source_text="", spec=spec,
        claim_token="t", now=clock.wall(),
    )  # fmt: skip
    daemon.store.set_job_state("old", JobState.RUNNING, "started", clock.wall())
    daemon.store.add_attempt(job_id="old", stage_index=0, stage_label="1-command", params=Plan(),
                             dir=str(tmp_path / "a"), now=clock.wall())  # fmt: skip
    daemon.close()
    again, _ = make_daemon(tmp_path, lambda r: PASS_TRAIN)
    try:
        job = again.store.find_job("old")
        assert job is not None and job.state == "failed" and "cannot read this job's stored spec" in job.reason
        assert [a.failure_class for a in again.store.attempts("old")] == ["mkd_error"]
    finally:
        again.close()
