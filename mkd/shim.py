"""The per-attempt shim: `python -m mkd.shim ATTEMPT_DIR`.

One small process per attempt, in its own session, so the run outlives mkd (as
containerd's shim and Slurm's slurmstepd do). It starts the child in a new process
group with SIGINT/SIGHUP/SIGQUIT at their default disposition, waits for it as its
parent (so the real exit status is never lost), reaps orphaned workers as a child
subreaper, kills every process of the run when the root dies (MimicKit's rank 1 otherwise
lives on at 100 % GPU), rotates the console log by size, and writes `exit.json` last.

Every process of the run, not only the root's group: a worker that calls setsid() or setpgid(0, 0),
or double-forks, still dies with its run. Where launch.json names a cgroup (mkd.cgroup) the
run is born in it and killed with cgroup.kill; in every case the shim, a subreaper, is the
parent of every orphan of the run, so the processes below it are the run's (mkd.procs).
Stop: SIGTERM to the shim -> SIGTERM (and SIGCONT) to every process of the run, SIGKILL after
the grace; the same, with the grace capped, when the root dies and others live on. exit.json
is written once none is left.

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

    from mkd.procs import ProcStat

PR_SET_CHILD_SUBREAPER = 36
RUN_ID_VAR = "MKD_RUN_ID"  # as mkd.procs.RUN_ID_VAR (not imported yet: see the module docstring)
POLL_SECONDS = 0.05
ROOT_EXIT_GRACE_CAP = 10.0
CGROUP_WAIT_SECONDS = 0.5  # for the daemon to move the shim into the run's cgroup (see _cgroup_for_the_run)
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


def _enter_cgroup(path: str) -> bool:
    """Move the shim into the cgroup at `path` (so the run is born there); False when it cannot."""
    try:
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def _in_cgroup(path: str) -> bool:
    """Whether this process is in the cgroup at `path` (named by its unique last component)."""
    try:
        with open("/proc/self/cgroup", "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    name = b"/" + os.path.basename(path).encode()
    return any(line.startswith(b"0::") and line.endswith(name) for line in lines)


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
        self.stuck_in_cgroup = False

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
        env = dict(self.launch["env"])
        run_id = self.launch.get("run_id")
        if run_id:
            env[RUN_ID_VAR] = run_id
        cgroup = self._cgroup_for_the_run()
        try:
            env = run_env(env, self.launch.get("inherit_env") or (), os.environ)
            pid = spawn(self.launch["argv"], env, self.launch.get("cwd"), console)
        except OSError as error:
            self._leave_cgroup(cgroup, remove=True)
            self._write("exit.json", {"spawn_error": str(error), "ended_at": time.time()})
            return 0
        record = {
            "pid": pid,
            "pgid": pid,
            "start_ticks": _start_ticks(pid),
            "started_at": time.time(),
            "containment": "cgroup" if cgroup else "proc",
            "cgroup": cgroup,
            "run_id": run_id,
        }
        self._write("child.json", record, durable=False)
        # out of the run's cgroup after child.json: a move waits ~10-15 ms for the kernel
        if not self._leave_cgroup(cgroup, remove=False):
            self.stuck_in_cgroup = True  # then never cgroup.kill: it would kill the shim too
        self._supervise(pid, console, cgroup)
        return 0

    def _cgroup_for_the_run(self) -> str | None:
        """Be in the run's cgroup before starting it, or None (then the /proc walk alone contains
        the run). The daemon moves the shim there right after starting it, while this interpreter
        starts up (a process's first move into a new cgroup waits ~10-15 ms for the kernel); only
        if that has not happened within CGROUP_WAIT_SECONDS does the shim move itself."""
        path = self.launch.get("cgroup")
        if not path:
            return None
        deadline = time.monotonic() + CGROUP_WAIT_SECONDS
        while not _in_cgroup(path):
            if time.monotonic() > deadline:
                try:
                    os.mkdir(path)
                except FileExistsError:
                    pass
                except OSError:
                    return None
                if not _enter_cgroup(path):
                    with contextlib.suppress(OSError):
                        os.rmdir(path)
                    return None
                break
            time.sleep(0.001)
        return str(path)

    def _leave_cgroup(self, cgroup: str | None, *, remove: bool) -> bool:
        """Back to the cgroup the shim came from: the run alone stays in its own."""
        if cgroup is None:
            return True
        left = _enter_cgroup(self.launch.get("cgroup_home") or os.path.dirname(cgroup))
        if remove:
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)
        return left

    def _members(self, cgroup: str | None) -> list[ProcStat]:
        """Every live process of the run: the shim's descendants (it is their subreaper) and its cgroup's."""
        from mkd import cgroup as cgroups  # after child.json: see the module docstring
        from mkd.procs import all_stats, descendants

        me = os.getpid()
        stats = all_stats()
        below = descendants(me, stats) - {me}
        inside = set(cgroups.procs(cgroup)) - {me} if cgroup else set()
        return [s for s in stats if (s.pid in below or s.pid in inside) and s.state != "Z"]

    @staticmethod
    def _quiet(children_left: bool, cgroup: str | None) -> bool:
        """No process of the run is left: the shim has no child (every orphan becomes one) and the cgroup is empty."""
        from mkd import cgroup as cgroups

        return not children_left and not (cgroup and set(cgroups.procs(cgroup)) - {os.getpid()})

    def _kill_all(self, cgroup: str | None) -> None:
        from mkd import cgroup as cgroups
        from mkd.procs import kill_until_gone

        if cgroup and _in_cgroup(cgroup):  # a move by the daemon that landed late: out again first
            self.stuck_in_cgroup = not self._leave_cgroup(cgroup, remove=False) or _in_cgroup(cgroup)
        if cgroup and not self.stuck_in_cgroup:
            cgroups.kill(cgroup)
        kill_until_gone(lambda: self._members(cgroup), timeout=0.2)  # forks racing the kill: again next poll

    def _supervise(self, pid: int, console: str, cgroup: str | None) -> None:
        from mkd import cgroup as cgroups

        def members() -> list[ProcStat]:
            return self._members(cgroup)

        def quiet(children_left: bool) -> bool:
            return self._quiet(children_left, cgroup)

        grace = float(self.launch.get("grace_seconds", 30.0))
        max_bytes = int(self.launch.get("log_max_bytes", 0))
        backups = int(self.launch.get("log_backups", 3))
        termed: set[tuple[int, int]] = set()
        stopping = False
        next_rotate = 0.0
        while True:
            now = time.monotonic()
            children_left = self._reap(pid)
            if self.stop_requested_at is not None and not stopping:
                stopping = True
                self.kill_at = min(self.kill_at or now + grace, now + grace)
            if self.root_status is not None and not stopping:
                if quiet(children_left):
                    break
                stopping = True
                self.kill_at = now + min(grace, ROOT_EXIT_GRACE_CAP)
                self.lingering = len(members())
            if stopping and (self.kill_at is None or now < self.kill_at):
                self._terminate_new(members(), termed)  # a process forked since gets its SIGTERM too
            if self.kill_at is not None and now >= self.kill_at:
                self._kill_all(cgroup)
                children_left = self._reap(pid)
            if self.root_status is not None and stopping and quiet(children_left):
                break
            if now >= next_rotate:
                rotate(console, max_bytes, backups)
                next_rotate = now + 1.0
            time.sleep(POLL_SECONDS)
        if cgroup and _in_cgroup(cgroup):  # a move by the daemon that landed late
            self._leave_cgroup(cgroup, remove=False)
        if cgroup:
            cgroups.remove(cgroup)
        self._write_exit("cgroup" if cgroup else "proc")

    @staticmethod
    def _terminate_new(found: list[ProcStat], termed: set[tuple[int, int]]) -> None:
        from mkd.procs import terminate

        fresh = [s for s in found if s.identity not in termed]
        terminate(fresh)
        termed.update(s.identity for s in fresh)

    def _reap(self, root: int) -> bool:
        """Collect every exited child (the root, and orphans reparented here); True while any is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == root:
                self.root_status = status
                self.root_exit_at = time.time()

    def _write_exit(self, containment: str) -> None:
        status = self.root_status or 0
        record = {
            "returncode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "stop_requested": self.stop_requested_at is not None,
            "root_exit_at": self.root_exit_at,
            "lingering_workers": self.lingering,
            "containment": containment,
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
