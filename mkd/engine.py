"""Starting, watching and stopping attempts through per-attempt shims (see mkd.shim).

The daemon keeps the Popen of each shim it started only to reap it; everything needed to
find a run again after a restart (shim pid and start time, the child's process group) is
in the store and in the attempt's folder, so a new daemon re-adopts a run without
starting a second copy.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkd.fsutil import atomic_write_json, read_json
from mkd.procs import group_members, is_same_process, signal_group, signal_process, start_ticks
from mkd.sdnotify import without_notify_vars

# The folder that holds the mkd package the daemon runs: the shim imports mkd from it.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    console: Path
    grace_seconds: float
    log_max_bytes: int
    log_backups: int


@dataclass(frozen=True)
class ShimHandle:
    pid: int
    start_ticks: int | None


@dataclass(frozen=True)
class ExitRecord:
    returncode: int | None
    signal: int | None
    stop_requested: bool
    lingering_workers: int
    spawn_error: str | None
    lost: bool = False  # the shim died without writing exit.json
    executor_failure: str | None = None  # a FailureClass the executor saw (Slurm ended the job: TIMEOUT, NODE_FAIL)
    executor_evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChildInfo:
    pid: int
    pgid: int
    start_ticks: int | None


class Engine:
    """Runs attempts; knows nothing about jobs, retries or MimicKit."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._children: set[int] = set()

    def launch(self, attempt_dir: Path, spec: LaunchSpec) -> ShimHandle:
        attempt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            attempt_dir / "launch.json",
            {
                "argv": spec.argv,
                "env": spec.env,
                "cwd": spec.cwd,
                "console": str(spec.console),
                "grace_seconds": spec.grace_seconds,
                "log_max_bytes": spec.log_max_bytes,
                "log_backups": spec.log_backups,
            },
            mode=0o600,  # the run's whole environment, secrets included: for the daemon's user only
        )
        pid = os.posix_spawn(
            self.python,
            shim_argv(self.python, attempt_dir),
            shim_env(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    str(attempt_dir / "shim.log"),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o644,
                ),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        self._children.add(pid)
        return ShimHandle(pid, start_ticks(pid))

    def reap(self) -> None:
        """Collect exited shims we started, so they leave no zombies."""
        for pid in list(self._children):
            if _reaped(pid):
                self._children.discard(pid)

    def shim_alive(self, handle: ShimHandle) -> bool:
        """A shim we started is alive until waitpid reaps it (its pid cannot be reused before):
        no /proc read. A re-adopted one is checked by pid and start time."""
        if handle.pid in self._children:
            if not _reaped(handle.pid):
                return True
            self._children.discard(handle.pid)
            return False
        return is_same_process(handle.pid, handle.start_ticks)

    def poll(self, attempt_dir: Path, handle: ShimHandle) -> ExitRecord | None:
        """The attempt's end, or None while it runs (its shim writes exit.json, then exits)."""
        if self.shim_alive(handle):
            return None
        record = exit_record(attempt_dir)
        if record is not None:
            return record
        return ExitRecord(None, None, False, 0, None, lost=True)

    def child(self, attempt_dir: Path) -> ChildInfo | None:
        return child_info(attempt_dir)

    def stop(self, handle: ShimHandle, attempt_dir: Path, *, now_kill: bool = False) -> None:
        """Ask the shim to stop the run (SIGTERM, SIGKILL after the grace); a second call kills."""
        if self.shim_alive(handle):
            signal_process(handle.pid, signal.SIGTERM)
            if now_kill:
                signal_process(handle.pid, signal.SIGTERM)
            return
        child = self.child(attempt_dir)
        if child is not None:
            signal_group(child.pgid, signal.SIGKILL if now_kill else signal.SIGTERM)

    def kill_orphaned_group(self, attempt_dir: Path) -> int:
        """After a shim was lost: kill what is left of its child's group; returns how many."""
        child = self.child(attempt_dir)
        if child is None:
            return 0
        members = group_members(child.pgid)
        if members:
            signal_group(child.pgid, signal.SIGKILL)
        return len(members)

    def close(self) -> None:
        """Forget the shims; they and their runs keep going without the daemon."""
        self.reap()
        self._children.clear()


def child_info(attempt_dir: Path) -> ChildInfo | None:
    """The run's root process as its shim recorded it (child.json), wherever the shim ran."""
    data = read_json(attempt_dir / "child.json")
    if not isinstance(data, dict):
        return None
    return ChildInfo(int(data["pid"]), int(data["pgid"]), data.get("start_ticks"))


def shim_argv(python: str, attempt_dir: Path) -> list[str]:
    """The shim's command line. -S: no site (its .pth files, an editable install's finder),
    which took most of the shim's start-up, the path to "running"; the shim needs the
    standard library and mkd only, found through shim_env's PYTHONPATH. -P: not the cwd
    first on sys.path. The line ends `-m mkd.shim ATTEMPT_DIR`, how a restarted daemon
    finds a shim it started but never recorded (mkd.procs.find_by_argv_tail)."""
    return [python, "-S", "-P", "-m", "mkd.shim", str(attempt_dir)]


def shim_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The shim's environment: the daemon's, without systemd's notify variables (only the
    daemon talks to systemd), with the daemon's own mkd first on PYTHONPATH (see shim_argv).
    The run itself gets the environment in launch.json, not this one."""
    env = without_notify_vars(environ)
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_PARENT + (os.pathsep + inherited if inherited else "")
    return env


def exit_record(attempt_dir: Path) -> ExitRecord | None:
    data: Any = read_json(attempt_dir / "exit.json")
    if not isinstance(data, dict):
        return None
    return ExitRecord(
        returncode=data.get("returncode"),
        signal=data.get("signal"),
        stop_requested=bool(data.get("stop_requested")),
        lingering_workers=int(data.get("lingering_workers") or 0),
        spawn_error=data.get("spawn_error"),
    )


def _reaped(pid: int) -> bool:
    """waitpid without blocking: True once the child has exited (or is not ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid
