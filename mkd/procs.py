"""Facts about processes from /proc: identity (pid plus start time), groups, sessions, and
which processes belong to a run.

A pid alone is not an identity (pids are reused), so every recorded process carries its
start time in clock ticks since boot, as /proc/PID/stat field 22 gives it, and a signal
goes through a pidfd opened and checked against that start time (`send`), so it can
never reach a process that took a dead one's pid.

Without a cgroup (mkd.cgroup) a run is found by walking /proc (`run_members`): the
processes below its shim or root, its recorded process group, every session or group led
by one of those, and every process whose environment carries the run's MKD_RUN_ID.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

RUN_ID_VAR = "MKD_RUN_ID"  # in every run's environment: a run's processes are found by it after its shim is gone


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start_ticks: int
    comm: str

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


def read_stat(pid: int) -> ProcStat | None:
    # os.open/os.read, not open(): every stop scans all of /proc, and this halves a scan
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm is in parentheses and may itself contain spaces or parentheses
    left, right = raw.find(b"("), raw.rfind(b")")
    fields = raw[right + 2 :].split()
    if len(fields) < 20:
        return None
    return ProcStat(
        pid=pid,
        state=fields[0].decode("ascii", "replace"),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        start_ticks=int(fields[19]),
        comm=raw[left + 1 : right].decode("utf-8", "replace"),
    )


def start_ticks(pid: int) -> int | None:
    found = read_stat(pid)
    return None if found is None else found.start_ticks


def is_same_process(pid: int | None, ticks: int | None) -> bool:
    """True when `pid` is alive (not a zombie) and is the process that started at `ticks`."""
    if not pid:
        return False
    found = read_stat(pid)
    return found is not None and found.state != "Z" and (ticks is None or found.start_ticks == ticks)


def all_stats() -> list[ProcStat]:
    stats = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = read_stat(int(entry))
            if found is not None:
                stats.append(found)
    return stats


def group_members(pgid: int, *, include_zombies: bool = False) -> list[ProcStat]:
    """Processes of a process group; MimicKit's workers stay in it even when orphaned."""
    return [s for s in all_stats() if s.pgid == pgid and (include_zombies or s.state != "Z")]


def descendants(root: int, stats: list[ProcStat] | None = None) -> set[int]:
    """`root` and every process below it."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s.pid)
    found, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group is gone (ESRCH)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def signal_process(pid: int, sig: int = signal.SIGTERM) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def find_by_argv_tail(tail: list[str]) -> list[int]:
    """Pids whose command line ends with `tail` (e.g. a shim started for one attempt folder)."""
    want = [part.encode() for part in tail]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if argv[-len(want) :] == want:
            found.append(int(entry))
    return found


def environ_has(pid: int, entry: bytes) -> bool:
    """True when `entry` (b"NAME=value") is one of the process's environment variables."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return entry in handle.read().split(b"\0")
    except OSError:
        return False


def run_members(
    seeds: Iterable[tuple[int, int | None]],
    *,
    groups: Iterable[int] = (),
    since_ticks: int | None = None,
    run_id: str | None = None,
    exclude: Iterable[int] = (),
    stats: list[ProcStat] | None = None,
) -> list[ProcStat]:
    """The live processes of one run, found without a cgroup.

    `seeds` (pid, start ticks): the shim and the run's root, where still alive as recorded.
    From them, to a fixed point: every process below a member (orphans of a live shim are
    its children: it is a subreaper); every process whose session or group is led by a
    member's pid or is one of `groups` (the recorded process group, still reserved by the
    kernel while a member uses it); every process whose environment has MKD_RUN_ID=run_id
    (what is left when the shim died and escapees were reparented to PID 1). Nothing older
    than `since_ticks` (the run's start) is taken: it cannot be the run's."""
    stats = all_stats() if stats is None else stats
    live = [s for s in stats if s.state != "Z" and s.pid not in set(exclude) and s.pid != os.getpid()]
    if since_ticks is not None:
        live = [s for s in live if s.start_ticks >= since_ticks]
    by_pid = {s.pid: s for s in stats}
    keys = {pid for pid, ticks in seeds if pid in by_pid and (ticks is None or by_pid[pid].start_ticks == ticks)}
    for pgid in groups:
        if pgid not in by_pid:  # its leader is gone (a live one is ours only as a seed: else the pid was reused)
            keys.add(pgid)
    if run_id:
        entry = f"{RUN_ID_VAR}={run_id}".encode()
        keys |= {s.pid for s in live if environ_has(s.pid, entry)}
    members: dict[int, ProcStat] = {}
    while True:
        grown = [
            s
            for s in live
            if s.pid not in members and (s.pid in keys or s.ppid in members or s.sid in keys or s.pgid in keys)
        ]
        if not grown:
            return sorted(members.values(), key=lambda s: s.pid)
        for s in grown:
            members[s.pid] = s
            keys.add(s.pid)


def send(pid: int, start: int | None, sig: int) -> bool:
    """Signal the process `pid` only if it is still the one that started at `start`: through a
    pidfd, checked after it is opened, so a pid reused in between is never hit. False when gone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (kernel < 5.3): the start-time check, then kill
        found = read_stat(pid)
        if found is None or (start is not None and found.start_ticks != start):
            return False
        return signal_process(pid, sig)
    try:
        found = read_stat(pid)
        if found is None or (start is not None and found.start_ticks != start):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(fd)


def terminate(members: Iterable[ProcStat]) -> int:
    """SIGTERM, then SIGCONT (a stopped process acts on it), to each; returns how many got it."""
    sent = 0
    for member in members:
        if send(member.pid, member.start_ticks, signal.SIGTERM):
            send(member.pid, member.start_ticks, signal.SIGCONT)
            sent += 1
    return sent


def terminate_all(find: Callable[[], list[ProcStat]], timeout: float = 0.5) -> int:
    """`terminate` every process `find` names, and again those that appear meanwhile (a forker's
    children born after the first scan), until a scan finds none new or `timeout`; returns how many."""
    termed: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout
    while True:
        fresh = [s for s in find() if s.identity not in termed]
        if not fresh:
            return len(termed)
        terminate(fresh)
        termed.update(s.identity for s in fresh)
        if time.monotonic() > deadline:
            return len(termed)
        time.sleep(0.02)


def kill_until_gone(find: Callable[[], list[ProcStat]], timeout: float = 5.0) -> set[tuple[int, int]]:
    """SIGKILL every process `find` names, again and again until it names none (a process
    that forks while it is killed leaves children that the next round finds), or `timeout`;
    returns the (pid, start ticks) of those signalled."""
    killed: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if not found:
            return killed
        for member in found:
            if send(member.pid, member.start_ticks, signal.SIGKILL):
                killed.add(member.identity)
        if time.monotonic() > deadline:
            return killed
        time.sleep(0.01)
