"""Facts about processes from /proc: identity (pid plus start time) and process groups.

A pid alone is not an identity (pids are reused), so every recorded process carries its
start time in clock ticks since boot, as /proc/PID/stat field 22 gives it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgid: int
    start_ticks: int
    comm: str


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces or parentheses
    left, right = raw.find("("), raw.rfind(")")
    fields = raw[right + 2 :].split()
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        start_ticks=int(fields[19]),
        comm=raw[left + 1 : right],
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
