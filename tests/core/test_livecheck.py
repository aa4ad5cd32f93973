"""Watching a running attempt, as a table: what it printed and its clocks -> stop it, and how."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mkd.livecheck import RunFacts, StopRequest, check
from mkd.mimickit.classify import split_lines
from mkd.mimickit.console import ConsoleParser

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mimickit"
QUIET = RunFacts("train", age=10.0, since_progress=1.0, timeout=None, startup_timeout=300.0, stall_timeout=120.0)
NAN_ROWS = ConsoleParser().feed(
    (FIXTURES / "cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt").read_text()
)
CLASS_D = split_lines((FIXTURES / "gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt").read_text())


def reason(found: StopRequest | None) -> tuple[str, bool] | None:
    return None if found is None else (found.reason, found.kill_now)


CASES = [
    ("a healthy run goes on", QUIET, [], [], None),
    # provisional: the verdict reads the whole log after the kill and says class D (test_verdict)
    ("class D's abort: kill now", QUIET, CLASS_D, [], ("startup_multi_device", True)),
    ("NaN in a loss: stop", QUIET, [], NAN_ROWS, ("nan_divergence", False)),
    ("the stage timeout", replace(QUIET, age=61.0, timeout=60.0), [], [], ("timeout", False)),
    ("no first iteration in time", replace(QUIET, age=301.0, since_progress=None), [], [], ("stall", False)),
    ("still starting up", replace(QUIET, age=299.0, since_progress=None), [], [], None),
    ("quiet for too long", replace(QUIET, since_progress=121.0), [], [], ("stall", False)),
    (
        "quiet and SIGSTOP'd: SIGKILL at once",
        replace(QUIET, since_progress=121.0, root_state="T", root_pid=42),
        [],
        [],
        ("stall", True),
    ),
    ("a test stage without a result", replace(QUIET, stage_kind="test", age=601.0), [], [], ("timeout", False)),
    (
        "a probe that proved itself",
        replace(QUIET, stage_kind="probe", probe_passed=True),
        [],
        [],
        ("probe_passed", False),
    ),
]


@pytest.mark.parametrize(("case", "facts", "lines", "rows", "expected"), CASES, ids=[c[0] for c in CASES])
def test_live_check(case: str, facts: RunFacts, lines: list[str], rows: list[object], expected: object) -> None:
    assert reason(check(facts, lines, rows)) == expected  # type: ignore[arg-type]


def test_a_stopped_process_is_named_in_the_evidence() -> None:
    found = check(replace(QUIET, since_progress=500.0, root_state="T", root_pid=42), [], [])
    assert found is not None and "root 42 is stopped (state T" in found.evidence[1]
