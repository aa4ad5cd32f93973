"""Starting, watching and stopping attempts through per-attempt shims (see mkd.shim).

The daemon keeps the Popen of each shim it started only to reap it; everything needed to
find a run again after a restart (shim pid and start time, the child's process group) is
in the store and in the attempt's folder, so a new daemon re-adopts a run without
starting a second copy.

Containment: where mkd.cgroup finds a cgroup v2 tree it may write, each run gets a cgroup
of its own (launch.json names it; the daemon makes it and moves the new shim in, or the
shim does); else the run is found by walking /proc (mkd.procs.run_members). Which one an
attempt got is in its child.json and exit.json ("containment"). The daemon's own kill
paths, for a run whose shim is gone, use both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mkd import cgroup
from mkd.exits import ExitRecord, read_exit
from mkd.fsutil import atomic_write_json, read_json
from mkd.procs import (
    ProcStat,
    is_same_process,
    kill_until_gone,
    run_members,
    signal_process,
    start_ticks,
    terminate_all,
)
from mkd.sdnotify import without_notify_vars

log = logging.getLogger(__name__)
KILL_ROUNDS_SECONDS = 2.0  # the daemon's own SIGKILL rounds for a lost shim's run (a D-state process waits)

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
class ChildInfo:
    pid: int
    pgid: int
    start_ticks: int | None
    containment: str = "proc"  # "cgroup": the run has a cgroup of its own; "proc": found by walking /proc
    cgroup: str | None = None
    run_id: str | None = None  # MKD_RUN_ID in the run's environment


class Engine:
    """Runs attempts; knows nothing about jobs, retries or MimicKit."""

    def __init__(self, python: str = sys.executable, containment: str | None = None) -> None:
        """containment: "auto" (a cgroup where one can be made), "cgroup" (the same, without
        asking systemd's delegation mark), "proc" (never a cgroup); default: $MKD_CONTAINMENT or auto."""
        self.python = python
        self._children: set[int] = set()
        self.where = cgroup.locate(containment or cgroup.mode_from_env(dict(os.environ)))
        if self.where.parent:
            log.info("process containment: a cgroup per attempt, under %s", self.where.parent)
            if swept := cgroup.sweep(self.where.parent):
                log.info("removed %d empty attempt cgroup(s) left by killed shims", swept)
        else:
            log.info("process containment: /proc walk (no cgroup: %s)", self.where.why)

    @property
    def containment(self) -> str:
        """What new attempts get: "cgroup" or "proc" (the shim falls back to proc if it cannot)."""
        return "cgroup" if self.where.parent else "proc"

    def launch(self, attempt_dir: Path, spec: LaunchSpec) -> ShimHandle:
        attempt_dir.mkdir(parents=True, exist_ok=True)
        run_id = os.urandom(8).hex()
        parent = self.where.parent
        cgroup_path = os.path.join(parent, cgroup.PREFIX + run_id) if parent else None
        write_launch(attempt_dir, spec, run_id=run_id, cgroup=cgroup_path, cgroup_home=parent)
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
        if parent:  # in a thread: the move may wait 10-15 ms in the kernel, the loop must not
            path = os.path.join(parent, cgroup.PREFIX + run_id)
            mover = threading.Thread(target=_move_into_new_cgroup, args=(pid, path), name="mkd-cgroup-move")
            mover.daemon = True
            mover.start()
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
        record = read_exit(attempt_dir)
        if record is not None:
            return record
        return ExitRecord(None, None, False, 0, None, lost=True)

    def child(self, attempt_dir: Path) -> ChildInfo | None:
        return child_info(attempt_dir)

    def stop(self, handle: ShimHandle, attempt_dir: Path, *, now_kill: bool = False) -> None:
        """Ask the shim to stop the run (SIGTERM, SIGKILL after the grace); a second call kills.
        With the shim gone, the daemon signals every process of the run itself."""
        if self.shim_alive(handle):
            signal_process(handle.pid, signal.SIGTERM)
            if now_kill:
                signal_process(handle.pid, signal.SIGTERM)
            return
        if now_kill:
            self.kill_orphaned_group(attempt_dir)
        else:
            terminate_all(lambda: self.run_processes(attempt_dir))

    def kill_orphaned_group(self, attempt_dir: Path) -> int:
        """After a shim was lost: SIGKILL every process left of its run (its cgroup, and what the
        /proc walk finds: below the root, its group, the sessions and groups they lead, MKD_RUN_ID);
        returns how many."""
        child = self.child(attempt_dir)
        if child is None:
            return 0
        found = {s.identity for s in self.run_processes(attempt_dir)}
        if child.cgroup:
            cgroup.kill(child.cgroup)
        found |= kill_until_gone(lambda: self.run_processes(attempt_dir), timeout=KILL_ROUNDS_SECONDS)
        if child.cgroup:
            cgroup.remove(child.cgroup)
        return len(found)

    def run_processes(self, attempt_dir: Path) -> list[ProcStat]:
        return run_processes(attempt_dir)

    def close(self) -> None:
        """Forget the shims; they and their runs keep going without the daemon."""
        self.reap()
        self._children.clear()


def write_launch(attempt_dir: Path, spec: LaunchSpec, **extra: object) -> None:
    """ATTEMPT_DIR/launch.json, what the shim runs, wherever it runs (this host or a Slurm node);
    `extra`: what only one executor adds (the cgroup, the variables a node passes on)."""
    record = {
        **extra,
        "argv": spec.argv,
        "env": spec.env,
        "cwd": spec.cwd,
        "console": str(spec.console),
        "grace_seconds": spec.grace_seconds,
        "log_max_bytes": spec.log_max_bytes,
        "log_backups": spec.log_backups,
    }
    # the run's whole environment, secrets included: for the daemon's user only
    atomic_write_json(attempt_dir / "launch.json", record, mode=0o600)


def child_info(attempt_dir: Path) -> ChildInfo | None:
    """The run's root process as its shim recorded it (child.json), wherever the shim ran."""
    data = read_json(attempt_dir / "child.json")
    if not isinstance(data, dict):
        return None
    return ChildInfo(
        int(data["pid"]),
        int(data["pgid"]),
        data.get("start_ticks"),
        containment=str(data.get("containment") or "proc"),
        cgroup=data.get("cgroup") or None,
        run_id=data.get("run_id") or None,
    )


def run_processes(attempt_dir: Path) -> list[ProcStat]:
    """The live processes of an attempt's run (never its shim): its cgroup's, and what the /proc
    walk finds from the shim and the root recorded in shim.json and child.json."""
    child = child_info(attempt_dir)
    if child is None:
        return []
    shim = read_json(attempt_dir / "shim.json")
    shim_pid = int(shim["pid"]) if isinstance(shim, dict) and shim.get("pid") else 0
    shim_ticks = shim.get("start_ticks") if isinstance(shim, dict) else None
    seeds = [(child.pid, child.start_ticks)]
    if shim_pid:
        seeds.append((shim_pid, shim_ticks))
    since = shim_ticks if isinstance(shim_ticks, int) else child.start_ticks
    found = {
        s.pid: s
        for s in run_members(seeds, groups=[child.pgid], since_ticks=since, run_id=child.run_id, exclude=[shim_pid])
    }
    if child.cgroup:
        found.update({s.pid: s for s in cgroup.members(child.cgroup) if s.pid != shim_pid})
    return sorted(found.values(), key=lambda s: s.pid)


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


def _move_into_new_cgroup(pid: int, path: str) -> None:
    """Make the run's cgroup and move the just-started shim into it, while the shim's interpreter
    starts: the first move into a new cgroup waits ~10-15 ms for the kernel, off the shim's path.
    A failure is only logged: the shim then moves itself, or falls back to the /proc walk."""
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
    except OSError as error:
        log.debug("cannot move shim %d into %s: %s", pid, path, error)


def _reaped(pid: int) -> bool:
    """waitpid without blocking: True once the child has exited (or is not ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid
