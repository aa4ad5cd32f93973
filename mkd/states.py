"""Job and attempt states, and the only transitions allowed between them.

Kept in one place so the store can refuse an impossible change (a finished job starting
again) instead of recording it.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"  # accepted, waiting for devices
    RUNNING = "running"  # an attempt of one of its stages is alive
    STEPPING = "stepping"  # between two healthy steps (the next probe rung, sweep point or stage): starts at once
    RETRY_WAIT = "retry_wait"  # an attempt failed; the next one starts after a backoff
    HELD = "held"  # paused by a person (`mkd pause`): starts nothing until `mkd resume`
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def folder(self) -> str:
        """Folder under jobs/ that mirrors this state for people."""
        return {"succeeded": "done", "stepping": "running"}.get(self.value, self.value)


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
LIVE = frozenset(JobState) - FINISHED
# Reopened only by `mkd retry` (Store.reopen_job), never by a decision of the daemon's own.
REOPENABLE = frozenset({JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # retry_wait and succeeded from queued: an attempt started just before a crash, found ended on restore;
    # queued -> queued: a stage skipped before anything ran (a visualize stage with no display)
    JobState.QUEUED: frozenset(
        {
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.STEPPING,
            JobState.RETRY_WAIT,
            JobState.CANCELLED,
            JobState.FAILED,
            JobState.SUCCEEDED,
            JobState.HELD,
        }
    ),
    # running -> running: the timeline's "its next attempt started" after a restore;
    # running -> held: a paused attempt ended (stop reason "paused")
    JobState.RUNNING: frozenset(
        {JobState.RUNNING, JobState.STEPPING, JobState.RETRY_WAIT, JobState.QUEUED, JobState.HELD, *FINISHED}
    ),
    # stepping -> stepping or a finished state: a stage skipped, or the last one, before anything ran
    JobState.STEPPING: frozenset({JobState.RUNNING, JobState.STEPPING, JobState.RETRY_WAIT, JobState.HELD, *FINISHED}),
    JobState.RETRY_WAIT: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.STEPPING, JobState.CANCELLED, JobState.FAILED, JobState.HELD}
    ),
    JobState.HELD: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class AttemptState(StrEnum):
    STARTING = "starting"  # shim launched, first iteration not seen yet
    RUNNING = "running"  # progress seen
    STOPPING = "stopping"  # mkd asked it to stop (cancel, timeout, stall, kill-now signature)
    ENDED = "ended"


class Outcome(StrEnum):
    """How an attempt ended."""

    SUCCEEDED = "succeeded"  # exit 0 and its stage's pass checks held
    FAILED = "failed"  # non-zero exit, or exit 0 with a pass check missing
    KILLED = "killed"  # ended by a signal mkd did not send
    STOPPED = "stopped"  # mkd stopped it (see the attempt's stop reason)
    SPAWN_FAILED = "spawn_failed"
    LOST = "lost"  # found dead on restore with no exit status recorded


class TransitionError(ValueError):
    pass


def check_reopen(old: JobState) -> None:
    """`mkd retry`: only a failed or cancelled job may be queued again."""
    if old not in REOPENABLE:
        raise TransitionError(f"only a failed or cancelled job can be retried; this one is {old}")


def check_transition(old: JobState, new: JobState) -> None:
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"a job cannot go from {old} to {new}")
