"""The verdict as a table: how an attempt ended -> failure class, evidence, permanence, outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkd.exits import ExitRecord
from mkd.failures import FailureClass as F
from mkd.states import Outcome
from mkd.verdict import AttemptEnd, Verdict, judge, judge_error

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mimickit"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8", errors="replace")


def ended(rc: int | None = 0, sig: int | None = None, **kw: object) -> ExitRecord:
    return ExitRecord(rc, sig, bool(kw.get("stop")), 0, kw.get("spawn_error"), bool(kw.get("lost")))  # type: ignore[arg-type]


OK_TRAIN = fixture("cpu_train_nenv16_quick.stdout.txt")
OOM = fixture("gpu_h100_1gpu_fail_cuda_oom_hog_gpu0_at_start_nenv4096.stdout.txt")
PORT = fixture("cpu_2proc_master_port_in_use_second_run.stdout.txt")
TEST_OK = fixture("cpu_test_mode_nenv4.stdout.txt")
TRAIN_CHECKS = ("exit_zero", "model_pt", "log_txt")
ALL_WRITTEN = {"model.pt": True, "log.txt": True}

CASES: list[tuple[str, AttemptEnd, F | None, bool, Outcome]] = [
    (
        "a clean training run passes",
        AttemptEnd(ended(0), "train", OK_TRAIN, TRAIN_CHECKS, ALL_WRITTEN, had_progress=True),
        None,
        False,
        Outcome.SUCCEEDED,
    ),
    (
        "exit 0 without model.pt is class B",
        AttemptEnd(ended(0), "warmup", OK_TRAIN, TRAIN_CHECKS, {"model.pt": False, "log.txt": True}, had_progress=True),
        F.WARMUP_OUTPUTS_MISSING,
        False,
        Outcome.FAILED,
    ),
    (
        "a real CUDA OOM",
        AttemptEnd(ended(1), "train", OOM, TRAIN_CHECKS, ALL_WRITTEN),
        F.CUDA_OOM,
        False,
        Outcome.FAILED,
    ),
    (
        "a lost shim is lost, with what was killed",
        AttemptEnd(ended(None, lost=True), "train", OK_TRAIN, leftovers_killed=3),
        F.LOST,
        False,
        Outcome.LOST,
    ),
    (
        "a program that cannot start is a config error",
        AttemptEnd(ended(None, spawn_error="No such file or directory: 'pythn'"), "train"),
        F.CONFIG_ERROR,
        True,
        Outcome.SPAWN_FAILED,
    ),
    (
        "a probe stopped as passed is a pass",
        AttemptEnd(ended(None, 15, stop=True), "probe", OK_TRAIN, stop_reason="probe_passed"),
        None,
        False,
        Outcome.SUCCEEDED,
    ),
    (
        "a stall mkd stopped keeps mkd's evidence",
        AttemptEnd(ended(None, 15, stop=True), "train", OK_TRAIN, stop_reason="stall", stop_evidence=("no iteration",)),
        F.STALL,
        False,
        Outcome.STOPPED,
    ),
    (
        "NaN divergence is permanent",
        AttemptEnd(ended(None, 15, stop=True), "train", OK_TRAIN, stop_reason="nan_divergence", stop_evidence=("x",)),
        F.NAN_DIVERGENCE,
        True,
        Outcome.STOPPED,
    ),
    (
        "cancel is recorded as cancelled",
        AttemptEnd(ended(None, 15, stop=True), "train", OK_TRAIN, stop_reason="cancelled"),
        F.CANCELLED,
        False,
        Outcome.STOPPED,
    ),
    (
        "shutdown --stop-runs is recorded as cancelled",
        AttemptEnd(ended(None, 15, stop=True), "train", OK_TRAIN, stop_reason="shutdown"),
        F.CANCELLED,
        False,
        Outcome.STOPPED,
    ),
    (
        "a live port signature is confirmed from the whole log",
        AttemptEnd(ended(None, 9, stop=True), "train", PORT, multi_device=True, stop_reason="port_in_use"),
        F.PORT_IN_USE,
        False,
        Outcome.STOPPED,
    ),
    (
        # issue 15: this raised "unknown stage kind 'command'" at every tick and wedged the job
        "a command stage stopped on a live signature ends with that class",
        AttemptEnd(
            ended(None, 9, stop=True), "command", PORT, stop_reason="port_in_use", stop_evidence=("EADDRINUSE",)
        ),
        F.PORT_IN_USE,
        False,
        Outcome.STOPPED,
    ),
    ("a command that exits 0 passes", AttemptEnd(ended(0), "command", "done\n"), None, False, Outcome.SUCCEEDED),
    (
        "a command that exits 3 is unknown with its last lines",
        AttemptEnd(ended(3), "command", "a\nb\n"),
        F.UNKNOWN,
        False,
        Outcome.FAILED,
    ),
    (
        "a command killed by a signal mkd did not send",
        AttemptEnd(ended(None, 9), "command", ""),
        F.KILLED,
        False,
        Outcome.KILLED,
    ),
    (
        "a test stage that printed its Mean Return passes",
        AttemptEnd(ended(0), "test", TEST_OK, ("exit_zero", "mean_return"), test_result_seen=True),
        None,
        False,
        Outcome.SUCCEEDED,
    ),
    (
        "a test stage without Mean Return fails",
        AttemptEnd(ended(0), "test", "nothing\n", ("exit_zero", "mean_return")),
        F.UNKNOWN,
        False,
        Outcome.FAILED,
    ),
    (
        "a sweep point is judged as a probe",
        AttemptEnd(ended(1), "sweep", OOM, TRAIN_CHECKS, ALL_WRITTEN),
        F.CUDA_OOM,
        False,
        Outcome.FAILED,
    ),
]


@pytest.mark.parametrize(("case", "end", "failure", "permanent", "outcome"), CASES, ids=[c[0] for c in CASES])
def test_verdict(case: str, end: AttemptEnd, failure: F | None, permanent: bool, outcome: Outcome) -> None:
    verdict = judge(end)
    assert (verdict.failure, verdict.permanent, verdict.outcome) == (failure, permanent, outcome)
    if failure not in (None, F.CANCELLED):
        assert verdict.evidence, "a failure always carries evidence"


def test_the_lost_evidence_says_what_was_killed_and_a_full_disk() -> None:
    verdict = judge(AttemptEnd(ended(None, lost=True), "train", leftovers_killed=2, disk_full=True))
    assert "2 process(es) killed" in verdict.evidence[0]
    assert "No space left on device" in verdict.evidence[1]


def test_an_unknown_stage_kind_is_unknown_not_an_exception() -> None:
    verdict = judge(AttemptEnd(ended(1), "eval", OOM))
    assert verdict.failure is F.UNKNOWN and "eval" in verdict.evidence[0]


def test_an_error_while_judging_ends_the_attempt_for_good() -> None:
    verdict = judge_error(ValueError("boom"))
    assert verdict == Verdict(
        F.MKD_ERROR, ("mkd could not judge this attempt: ValueError: boom",), True, Outcome.FAILED
    )
