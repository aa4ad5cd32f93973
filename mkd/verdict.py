"""The verdict on an ended attempt: how it ended (exit status, mkd's own stop, console tail,
the stage's pass checks) gives one failure class or a pass, its evidence, and whether a
retry could help.

Pure: the caller reads the files (console tail, out/ artifacts) and does the side effects
(killing a lost run's leftovers) first, and hands in what it found. `judge` never raises
for an odd attempt: anything it cannot place is `unknown` with the evidence, so one strange
attempt can never wedge its job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mkd.exits import ExitRecord
from mkd.failures import FailureClass, StopReason
from mkd.mimickit.classify import STAGE_KINDS, ExitInfo, classify
from mkd.states import Outcome

# Stop reasons that are a live "kill it now" signature: the whole log, read after the kill,
# may name the cause more precisely than the line that triggered it.
LIVE_SIGNATURE_CLASSES = frozenset(
    {FailureClass.STARTUP_MULTI_DEVICE, FailureClass.NCCL_ABORT_HANG, FailureClass.PORT_IN_USE}
)
# Stop reasons that are not failures.
NOT_FAILURES = frozenset({StopReason.PROBE_PASSED})


@dataclass(frozen=True)
class AttemptEnd:
    """Everything the verdict looks at, read by the caller."""

    exit: ExitRecord
    stage_kind: str
    console_tail: str = ""
    checks: tuple[str, ...] = ()  # the stage's pass checks (spec.Stage.checks)
    artifacts: Mapping[str, bool] | None = None  # out/ files a training stage must write (model.pt, log.txt)
    multi_device: bool = False
    had_progress: bool = False  # an iteration table was seen
    test_result_seen: bool = False  # a "Mean Return" was seen
    stop_reason: str | None = None  # why mkd stopped it: a StopReason or a FailureClass value
    stop_evidence: tuple[str, ...] = ()
    leftovers_killed: int = 0  # a lost run: processes of it mkd killed
    disk_full: bool = False  # a lost run: its folder's disk is full


@dataclass(frozen=True)
class Verdict:
    failure: FailureClass | None  # None: the attempt passed (or ended by a cancel, see `cancelled`)
    evidence: tuple[str, ...] = ()
    permanent: bool = False  # retrying cannot fix it
    outcome: Outcome = Outcome.SUCCEEDED

    @property
    def passed(self) -> bool:
        return self.failure is None


def judge(end: AttemptEnd) -> Verdict:
    """The verdict for one ended attempt."""
    failure, evidence, permanent = _failure(end)
    return Verdict(failure, evidence, permanent, outcome_of(end, failure))


def _failure(end: AttemptEnd) -> tuple[FailureClass | None, tuple[str, ...], bool]:
    exit = end.exit
    if exit.executor_failure and end.stop_reason is None:  # the executor ended it (Slurm: TIMEOUT, NODE_FAIL)
        return _as_failure(exit.executor_failure), exit.executor_evidence or (exit.executor_failure,), False
    if exit.lost:
        evidence = [f"the attempt's shim died without an exit record; {end.leftovers_killed} process(es) killed"]
        if end.disk_full:
            evidence.append("the disk of the attempt's folder is full (No space left on device)")
        return FailureClass.LOST, tuple(evidence), False
    if exit.spawn_error:
        return FailureClass.CONFIG_ERROR, (exit.spawn_error,), True
    stop = end.stop_reason
    if stop in NOT_FAILURES:
        return None, (), False
    mimickit = end.stage_kind != "command"
    if stop is not None:
        stopped = _as_failure(stop)
        if stopped in LIVE_SIGNATURE_CLASSES and mimickit:
            found = _classify(end, ExitInfo(1, None))
            if found is not None and found[0] not in (FailureClass.UNKNOWN, FailureClass.LONG_RUN_EXITED):
                return found
        stopped_why = end.stop_evidence or (f"mkd stopped the run: {stop}",)
        return stopped, stopped_why, stopped is FailureClass.NAN_DIVERGENCE
    if not mimickit:
        return _command_failure(exit, end.console_tail)
    missing = [name for name, ok in (end.artifacts or {}).items() if not ok and name.replace(".", "_") in end.checks]
    found = _classify(end, ExitInfo(exit.returncode, exit.signal), outputs_missing=bool(missing))
    if found is not None:
        return found
    if "mean_return" in end.checks and not end.test_result_seen:
        return FailureClass.UNKNOWN, ("exited 0 but printed no Mean Return",), False
    if "exit_zero" in end.checks and exit.returncode != 0:
        return FailureClass.UNKNOWN, (f"exit status {exit.returncode} signal {exit.signal}",), False
    return None, (), False


def _classify(
    end: AttemptEnd, info: ExitInfo, *, outputs_missing: bool = False
) -> tuple[FailureClass, tuple[str, ...], bool] | None:
    kind = "probe" if end.stage_kind == "sweep" else end.stage_kind
    if kind not in STAGE_KINDS:
        return FailureClass.UNKNOWN, (f"mkd has no MimicKit signatures for a {kind!r} stage",), False
    result = classify(
        end.console_tail,
        info,
        multi_device=end.multi_device,
        stage_kind=kind,
        outputs_missing=outputs_missing and info.returncode == 0,
        had_progress=end.had_progress,
    )
    return None if result is None else (result.failure, result.evidence, result.permanent)


def _as_failure(stop: str) -> FailureClass:
    """A stop reason as the failure class it is recorded under (cancel and shutdown: cancelled)."""
    if stop in (StopReason.CANCELLED, StopReason.SHUTDOWN):
        return FailureClass.CANCELLED
    if stop == StopReason.PAUSED:
        return FailureClass.PAUSED
    try:
        return FailureClass(stop)
    except ValueError:
        return FailureClass.UNKNOWN


def _command_failure(exit: ExitRecord, tail: str) -> tuple[FailureClass | None, tuple[str, ...], bool]:
    """A plain command has no log signatures: its exit status decides."""
    if exit.returncode == 0:
        return None, (), False
    last = tuple(tail.replace("\r", "\n").splitlines()[-5:])
    if exit.signal is not None:
        return FailureClass.KILLED, (f"killed by signal {exit.signal}", *last), False
    return FailureClass.UNKNOWN, (f"exit status {exit.returncode}", *last), False


def outcome_of(end: AttemptEnd, failure: FailureClass | None) -> Outcome:
    exit = end.exit
    if exit.lost:
        return Outcome.LOST
    if exit.spawn_error:
        return Outcome.SPAWN_FAILED
    if end.stop_reason is not None:
        return Outcome.SUCCEEDED if failure is None else Outcome.STOPPED
    if exit.signal is not None:
        return Outcome.KILLED
    return Outcome.SUCCEEDED if failure is None else Outcome.FAILED


def judge_error(error: BaseException) -> Verdict:
    """mkd itself failed while judging or finishing the attempt: end it as failed, with the error as evidence."""
    return Verdict(
        FailureClass.MKD_ERROR,
        (f"mkd could not judge this attempt: {type(error).__name__}: {error}",),
        permanent=True,
        outcome=Outcome.FAILED,
    )
