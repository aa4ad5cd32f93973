"""The per-attempt shim: `python -m mkd.shim ATTEMPT_DIR`.

One small process per attempt, in its own session, so the run outlives mkd (as
containerd's shim and Slurm's slurmstepd do). It starts the child in a new process
group with SIGINT/SIGHUP/SIGQUIT at their default disposition, waits for it as its
parent (so the real exit status is never lost), reaps orphaned workers as a child
subreaper, kills the whole group when the root dies (MimicKit's rank 1 otherwise lives
on at 100 % GPU), rotates the console log by size, and writes `exit.json` last.

Stop: SIGTERM to the shim -> SIGTERM to the child's group, SIGKILL after the grace.
Files in ATTEMPT_DIR: launch.json (read), shim.json, child.json and exit.json (written atomically).

Start-up is on the path from a job's drop to "running" (child.json), so until child.json
is written the shim imports little: no subprocess (the run starts through os.posix_spawn),
no pathlib, typing or mkd.procs (dataclasses, inspect); mkd.procs comes after child.json.
The engine starts it with -S (no site: .pth files and the editable-install finder cost
more than the rest of the start-up) and finds mkd through PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import time

from mkd.fsutil import atomic_write_json, read_json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy treats the name the same)
if TYPE_CHECKING:
    from typing import Any

PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.05
ROOT_EXIT_GRACE_CAP = 10.0
# At their default disposition in the run whatever the shim inherited: SIGPIPE and SIGXFSZ
# are ignored by Python itself (subprocess's restore_signals resets these two as well).
_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ)


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, as mkd.procs.start_ticks (not imported yet: see the module docstring)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2 :].split()[19])


def _no_inherited_fds() -> None:
    """close_fds=True of subprocess: descriptors the shim inherited stay out of the run."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                os.set_inheritable(fd, False)


def _exec_candidates(program: str, env: dict[str, str]) -> list[str]:
    """Where to look for argv[0]: as given when it has a slash, else along the run's PATH (as subprocess)."""
    if os.path.dirname(program):
        return [program]
    return [os.path.join(folder, program) for folder in os.get_exec_path(env)]


def spawn(argv: list[str], env: dict[str, str], cwd: str | None, console: str) -> int:
    """Start the run as subprocess.Popen(start_new_session=True, close_fds=True) with a
    preexec_fn resetting signals would, without importing subprocess: its own session and
    process group, stdin from /dev/null, stdout and stderr appended to `console`, the signals
    above at their default, nothing blocked. Returns the pid; OSError when it cannot start.

    The shim changes into `cwd` itself (os.posix_spawn has no chdir action), so `console`
    must be absolute or relative to the new cwd."""
    if cwd is not None:
        os.chdir(cwd)
    out = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # as open(console, "ab")
    try:
        _no_inherited_fds()
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, out, 2),
        ]
        first = last = 0
        for path in _exec_candidates(argv[0], env):
            try:
                return os.posix_spawn(
                    path, argv, env, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS, setsigmask=()
                )
            except OSError as error:  # as subprocess: the first error other than "not there", else the last
                last = error.errno or errno.ENOENT
                if not first and last not in (errno.ENOENT, errno.ENOTDIR):
                    first = last
        code = first or last or errno.ENOENT
        raise OSError(code, os.strerror(code), argv[0])
    finally:
        os.close(out)


def rotate(console: str | os.PathLike[str], max_bytes: int, backups: int) -> bool:
    """Copy-truncate rotation: the child keeps its O_APPEND descriptor and writes on."""
    path = os.fspath(console)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return False
    if max_bytes <= 0 or size <= max_bytes:
        return False
    for n in range(backups - 1, 0, -1):
        if os.path.exists(f"{path}.{n}"):
            os.replace(f"{path}.{n}", f"{path}.{n + 1}")
    if backups > 0:
        with open(path, "rb") as src, open(f"{path}.1", "wb") as dst:
            dst.write(src.read(size))
    os.truncate(path, 0)
    return True


def run_env(env: dict[str, str], inherit: list[str] | tuple[str, ...], own: Any) -> dict[str, str]:
    """The run's environment: launch.json's, plus the variables named in its inherit_env (a name, or a
    prefix ending in *) from the shim's own environment. On a Slurm node these are what Slurm chose
    there (CUDA_VISIBLE_DEVICES, SLURM_JOB_ID), which the daemon cannot know when it writes launch.json."""
    if not inherit:
        return env
    out = dict(env)
    for name, value in own.items():
        for pattern in inherit:
            if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                out[name] = value
                break
    return out


class Shim:
    def __init__(self, attempt_dir: str | os.PathLike[str]) -> None:
        self.dir = os.path.abspath(attempt_dir)  # the run's cwd becomes the shim's too (see spawn)
        self.launch: dict[str, Any] = read_json(os.path.join(self.dir, "launch.json"))
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

    def _write(self, name: str, record: dict[str, Any], *, durable: bool = True) -> None:
        atomic_write_json(os.path.join(self.dir, name), record, durable=durable)

    def run(self) -> int:
        # shim.json and child.json describe processes that a power cut ends: no fsync (it may wait
        # behind the daemon's own writes, on the way to "running")
        self._write("shim.json", {"pid": os.getpid(), "start_ticks": _start_ticks(os.getpid())}, durable=False)
        _become_subreaper()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)
        console = os.path.abspath(self.launch["console"])
        try:
            env = run_env(self.launch["env"], self.launch.get("inherit_env") or (), os.environ)
            pid = spawn(self.launch["argv"], env, self.launch.get("cwd"), console)
        except OSError as error:
            self._write("exit.json", {"spawn_error": str(error), "ended_at": time.time()})
            return 0
        record = {"pid": pid, "pgid": pid, "start_ticks": _start_ticks(pid), "started_at": time.time()}
        self._write("child.json", record, durable=False)
        self._supervise(pid, console)
        return 0

    def _supervise(self, pid: int, console: str) -> None:
        from mkd.procs import group_members, signal_group  # after child.json: see the module docstring

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
        self._write("exit.json", record)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mkd.shim ATTEMPT_DIR", file=sys.stderr)
        return 2
    return Shim(args[0]).run()


if __name__ == "__main__":
    sys.exit(main())
