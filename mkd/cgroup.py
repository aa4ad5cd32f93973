"""An attempt's own cgroup v2: where mkd may make one, and how to end everything in it.

A process group or a session is left with one call (setsid, setpgid, a double fork); a
cgroup only by writing oneself into another cgroup on purpose. So where mkd may create cgroups (cgroup v2 delegated to
its systemd unit with Delegate=yes, or any writable cgroup v2 tree the daemon runs in),
each attempt's run starts in a cgroup of its own, `mkd-run-RUNID` beside the daemon, and
a kill is `cgroup.kill` (every process in it, forks racing the kill included), as systemd
and Slurm's proctrack/cgroup do. Where it may not, mkd.procs walks /proc instead.

Only the run is in the cgroup, not its shim: the daemon moves the new shim in (or the shim
itself, if the daemon did not), the shim starts the run (born there) and moves itself back
out, so that it can kill the cgroup.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from mkd.procs import ProcStat, read_stat, send

PREFIX = "mkd-run-"
MODE_VAR = "MKD_CONTAINMENT"  # auto (the default), cgroup (no systemd delegation check), proc (never a cgroup)
MODES = ("auto", "cgroup", "proc")
SYSTEMD_UNIT_SUFFIXES = (".service", ".scope")


@dataclass(frozen=True)
class Where:
    """Where attempt cgroups go (`parent`), or None and why not, with the fix."""

    parent: str | None
    why: str
    fix: str = ""


def mode_from_env(environ: dict[str, str] | None = None) -> str:
    value = (environ if environ is not None else os.environ).get(MODE_VAR, "auto").strip().lower() or "auto"
    return value if value in MODES else "auto"


def mount_point(mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str] | None:
    """(mount point, root within the hierarchy) of the cgroup v2 file system, or None."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if sep and right.split()[:1] == ["cgroup2"]:
            fields = left.split()
            return _unescape(fields[4]), _unescape(fields[3])
    return None


def own_cgroup(pid: str = "self") -> str | None:
    """This process's cgroup v2 path (the `0::` line of /proc/PID/cgroup), or None."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def locate(mode: str = "auto", *, probe: bool = True) -> Where:
    """Where this process may make attempt cgroups. `probe`: make and remove one, the only
    sure test (a read-only bind mount, ProtectControlGroups=, a missing delegation)."""
    if mode == "proc":
        return Where(None, f"{MODE_VAR}=proc: cgroups are not used")
    mount = mount_point()
    if mount is None:
        return Where(
            None, "no cgroup v2 file system is mounted", "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)"
        )
    point, root = mount
    path = own_cgroup()
    if path is None or path.startswith("/.."):
        return Where(None, "this process's cgroup v2 is outside the mounted tree")
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    home = os.path.normpath(point + path)
    if not os.path.isdir(home):
        return Where(None, f"{home} (this process's cgroup) is not there")
    if mode == "auto" and home.endswith(SYSTEMD_UNIT_SUFFIXES) and not delegated(home):
        return Where(
            None,
            f"{home} is a systemd unit's cgroup that is not delegated to mkd",
            "Delegate=yes in the unit (systemd >= 251 marks it; older: also Environment=MKD_CONTAINMENT=cgroup)",
        )
    if not probe:
        return Where(home, f"cgroup v2 under {home}")
    test = os.path.join(home, f"{PREFIX}probe-{os.getpid()}")
    try:
        os.mkdir(test)
    except FileExistsError:
        pass
    except OSError as error:
        return Where(
            None,
            f"cannot make a cgroup in {home}: {error.strerror}",
            "under systemd: Delegate=yes and a writable /sys/fs/cgroup"
            " (ProtectControlGroups=no, or =private on systemd >= 257)",
        )
    remove(test)
    return Where(home, f"cgroup v2 under {home}")


def delegated(home: str) -> bool:
    """systemd (>= 251) marks a delegated cgroup with the xattr trusted.delegate or user.delegate;
    with DelegateSubgroup= the daemon runs one level below the marked one."""
    for folder in (home, os.path.dirname(home)):
        for name in ("trusted.delegate", "user.delegate"):
            try:
                if os.getxattr(folder, name).strip() in (b"1", b"yes", b"true"):
                    return True
            except OSError:
                continue
    return False


def procs(path: str) -> list[int]:
    """Pids in the cgroup and below (zombies are not listed); [] when it is gone."""
    found: list[int] = []
    for folder, _dirs, _files in os.walk(path):
        try:
            with open(os.path.join(folder, "cgroup.procs"), encoding="ascii") as handle:
                found += [int(line) for line in handle if line.strip()]
        except (OSError, ValueError):
            continue
    return found


def members(path: str) -> list[ProcStat]:
    return [s for s in (read_stat(pid) for pid in procs(path)) if s is not None and s.state != "Z"]


def kill(path: str) -> bool:
    """SIGKILL everything in the cgroup: cgroup.kill (Linux >= 5.14), else each pid it lists
    (a fork in between is found by the caller's next round). False when there is no such cgroup."""
    if not os.path.isdir(path):
        return False
    try:
        fd = os.open(os.path.join(path, "cgroup.kill"), os.O_WRONLY)
    except FileNotFoundError:
        for member in members(path):
            send(member.pid, member.start_ticks, signal.SIGKILL)
        return True
    except OSError:
        return False
    try:
        os.write(fd, b"1")
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def remove(path: str) -> bool:
    """rmdir the (empty) cgroup, and first any the run made below it; False while a process is in one."""
    for folder, _dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return True


def sweep(parent: str, older_than: float = 60.0) -> int:
    """Remove empty attempt cgroups left by shims that were killed with nobody to clean up (made
    more than `older_than` seconds ago: a new one is empty until its shim steps in); returns how many."""
    removed = 0
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return 0
    now = time.time()
    for name in names:
        path = os.path.join(parent, name)
        try:
            if now - os.stat(path).st_mtime < older_than:
                continue
        except OSError:
            continue
        if not procs(path) and remove(path):
            removed += 1
    return removed


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
