"""Watching a running attempt: does what it printed, or how long it has been quiet, mean "stop it now"?

Pure. The caller tails the console (new lines, new iteration tables), keeps the clocks, and
looks at the run's root process; `check` answers with a `StopRequest` or None. Kill-now
signatures (class A's dead child, class D's abort, a port in use) and a stopped process
(state T: SIGTERM would wait for a SIGCONT that never comes) get SIGKILL at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mkd.failures import FailureClass, StopReason
from mkd.mimickit.classify import row_has_nan, scan_live
from mkd.mimickit.console import IterationRow
from mkd.stagekinds import TRAINING

STOPPED_STATES = frozenset({"T", "t"})  # SIGSTOP'd or traced


@dataclass(frozen=True)
class RunFacts:
    """What the caller knows about a running attempt right now."""

    stage_kind: str
    age: float  # seconds since it started
    since_progress: float | None  # seconds since its last iteration; None before the first
    timeout: float | None  # the stage's timeout
    startup_timeout: float
    stall_timeout: float
    probe_passed: bool = False  # a probe: iteration 1 done and model.pt and log.txt written
    root_state: str | None = None  # the run's root process state in /proc (R, S, D, T, Z...)
    root_pid: int | None = None


@dataclass(frozen=True)
class StopRequest:
    reason: str  # a FailureClass or StopReason value
    evidence: tuple[str, ...]
    kill_now: bool = False


def check(facts: RunFacts, lines: Sequence[str], rows: Sequence[IterationRow]) -> StopRequest | None:
    hit = scan_live(list(lines))
    if hit is not None:
        return StopRequest(hit.failure.value, hit.evidence, kill_now=True)
    for row in rows:
        if row_has_nan(row):
            evidence = tuple(f"{k} = {v}" for k, v in row.values.items() if str(v) == "nan")
            return StopRequest(FailureClass.NAN_DIVERGENCE.value, (f"iteration {row.iteration}", *evidence))
    return _clocks(facts)


def _clocks(facts: RunFacts) -> StopRequest | None:
    if facts.timeout is not None and facts.age > facts.timeout:
        return StopRequest(FailureClass.TIMEOUT.value, (f"stage timeout of {facts.timeout:.0f} s reached",))
    training = facts.stage_kind in TRAINING
    if training and facts.since_progress is None:
        if facts.age > facts.startup_timeout:
            why = f"no iteration within the start-up timeout ({facts.startup_timeout:.0f} s)"
            return _stall(facts, why)
        return None
    if not training and facts.age > facts.startup_timeout * 2:
        return StopRequest(FailureClass.TIMEOUT.value, (f"no result within {2 * facts.startup_timeout:.0f} s",))
    if facts.since_progress is not None and facts.since_progress > facts.stall_timeout:
        return _stall(facts, f"no new iteration for {facts.since_progress:.0f} s (stall timeout)")
    if facts.stage_kind == "probe" and facts.probe_passed:
        return StopRequest(StopReason.PROBE_PASSED.value, ("iteration 1 done, model.pt and log.txt written",))
    return None


def _stall(facts: RunFacts, why: str) -> StopRequest:
    if facts.root_state in STOPPED_STATES:
        state = facts.root_state
        stopped = f"the run's root {facts.root_pid} is stopped (state {state}: SIGSTOP or a debugger)"
        return StopRequest(FailureClass.STALL.value, (why, stopped), kill_now=True)
    return StopRequest(FailureClass.STALL.value, (why,))
