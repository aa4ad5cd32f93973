"""The per-attempt shim: `python -m mkd.shim ATTEMPT_DIR`.

One small process per attempt, in its own session, so the run outlives mkd (as
containerd's shim and Slurm's slurmstepd do). It starts the child in a new process
group with SIGINT/SIGHUP/SIGQUIT at their default disposition, waits for it as its
parent (so the real exit status is never lost), reaps orphaned workers as a child
subreaper, kills the whole group when the root dies (MimicKit's rank 1 otherwise lives
on at 100 % GPU), rotates the console log by size, and writes `exit.json` last.

Stop: SIGTERM to the shim -> SIGTERM to the child's group, SIGKILL after the grace.
Files in ATTEMPT_DIR: launch.json (read), child.json and exit.json (written atomically).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mkd.fsutil import atomic_write_json, read_json
from mkd.procs import group_members, signal_group, start_ticks

PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.05
ROOT_EXIT_GRACE_CAP = 10.0
_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGPIPE)


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _child_setup() -> None:
    """In the child before exec: default dispositions, nothing blocked."""
    for sig in _DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def rotate(console: Path, max_bytes: int, backups: int) -> bool:
    """Copy-truncate rotation: the child keeps its O_APPEND descriptor and writes on."""
    try:
        size = console.stat().st_size
    except FileNotFoundError:
        return False
    if max_bytes <= 0 or size <= max_bytes:
        return False
    for n in range(backups - 1, 0, -1):
        older = console.with_name(f"{console.name}.{n}")
        if older.exists():
            os.replace(older, console.with_name(f"{console.name}.{n + 1}"))
    if backups > 0:
        with open(console, "rb") as src, open(console.with_name(f"{console.name}.1"), "wb") as dst:
            dst.write(src.read(size))
    os.truncate(console, 0)
    return True


class Shim:
    def __init__(self, attempt_dir: Path) -> None:
        self.dir = attempt_dir
        self.launch: dict[str, Any] = read_json(attempt_dir / "launch.json")
        self.stop_requested_at: float | None = None
        self.kill_at: float | None = None
        self.root_status: int | None = None
        self.root_exit_at: float | None = None
        self.lingering = 0

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        else:
            self.kill_at = time.monotonic()  # a second request: kill now

    def run(self) -> int:
        atomic_write_json(self.dir / "shim.json", {"pid": os.getpid(), "start_ticks": start_ticks(os.getpid())})
        _become_subreaper()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)
        console = Path(self.launch["console"])
        try:
            out = open(console, "ab", buffering=0)  # noqa: SIM115 - handed to the child
            child = subprocess.Popen(
                self.launch["argv"],
                cwd=self.launch.get("cwd"),
                env=self.launch["env"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup,
                close_fds=True,
            )
        except OSError as error:
            atomic_write_json(self.dir / "exit.json", {"spawn_error": str(error), "ended_at": time.time()})
            return 0
        out.close()
        pid = child.pid
        atomic_write_json(
            self.dir / "child.json",
            {"pid": pid, "pgid": pid, "start_ticks": start_ticks(pid), "started_at": time.time()},
        )
        self._supervise(child, pid, console)
        return 0

    def _supervise(self, child: subprocess.Popen[bytes], pid: int, console: Path) -> None:
        grace = float(self.launch.get("grace_seconds", 30.0))
        max_bytes = int(self.launch.get("log_max_bytes", 0))
        backups = int(self.launch.get("log_backups", 3))
        term_sent = False
        next_rotate = 0.0
        while True:
            now = time.monotonic()
            self._reap(pid)
            if self.stop_requested_at is not None and not term_sent:
                signal_group(pid, signal.SIGTERM)
                term_sent = True
                self.kill_at = min(self.kill_at or now + grace, now + grace)
            if self.root_status is not None and not term_sent:
                members = group_members(pid)
                if not members:
                    break
                self.lingering = len(members)
                signal_group(pid, signal.SIGTERM)
                term_sent = True
                self.kill_at = now + min(grace, ROOT_EXIT_GRACE_CAP)
            if self.kill_at is not None and now >= self.kill_at:
                signal_group(pid, signal.SIGKILL)
            if self.root_status is not None and term_sent and not group_members(pid):
                break
            if now >= next_rotate:
                rotate(console, max_bytes, backups)
                next_rotate = now + 1.0
            time.sleep(POLL_SECONDS)
        del child  # reaped by _reap through waitpid(-1)
        self._write_exit()

    def _reap(self, root: int) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == root:
                self.root_status = status
                self.root_exit_at = time.time()

    def _write_exit(self) -> None:
        status = self.root_status or 0
        record = {
            "returncode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "stop_requested": self.stop_requested_at is not None,
            "root_exit_at": self.root_exit_at,
            "lingering_workers": self.lingering,
            "ended_at": time.time(),
        }
        atomic_write_json(self.dir / "exit.json", record)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mkd.shim ATTEMPT_DIR", file=sys.stderr)
        return 2
    return Shim(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
